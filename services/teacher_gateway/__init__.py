"""OmniOPD teacher gateway (import name ``omniopd.gateway``)."""
