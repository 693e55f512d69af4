"""OmniOPD verifier (import name ``omniopd.verifier``)."""
