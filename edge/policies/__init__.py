"""Edge policies: per-route checks and transformations evaluated in the POLICY phase, in declared order.

The engine's contract with policies is in `edge.policies.base`; each policy type lives in its own module and is
compiled from config once per snapshot (the constructor validates, `evaluate` only serves requests).
"""
