"""Edge policies: per-route checks and transformations evaluated in the POLICY phase, in declared order.

The engine's contract with policies is in `edge.policies.base`; each policy type lives in its own module and is
compiled from config once per snapshot (the constructor validates, `evaluate` only serves requests):
`ip_access`, `jwt_auth` (+ `jwks` for keys, `oidc` for discovery), `introspection` (+ `introspect`: the
RFC 7662 client and its cache), `apikey` (+ the hash CLI), `ratelimit` (+ `limiter`: algorithms, local and Redis
stores), `cors`, `size`, `schema` (+ `bodies`: read-ahead and replay), `transform` (headers and path_rewrite),
`circuit`. The bearer-token policies share `claims` (token sources, scope and claim checks) and `provider` (calls
to identity providers, backoff, availability). `config` holds their typed config; `build` compiles them with
shared resources.
"""
