"""Adapters that let other training frameworks use OmniOPD's teacher gateway and verifier."""
