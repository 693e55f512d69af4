"""Tests of the verifier service (``omniopd.verifier``)."""
