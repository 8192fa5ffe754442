"""Edge policies: per-route checks and transformations evaluated in the POLICY phase, in declared order.

The engine's contract with policies is in `edge.policies.base`; each policy type lives in its own module and is
compiled from config once per snapshot (the constructor validates, `evaluate` only serves requests):
`ip_access`, `jwt_auth` (+ `jwks` for keys), `apikey` (+ the hash CLI), `ratelimit` (+ `limiter`: algorithms,
local and Redis stores), `cors`, `size`, `schema` (+ `bodies`: read-ahead and replay), `transform` (headers and
path_rewrite), `circuit`. `config` holds their typed config; `build` compiles them with shared resources.
"""
