"""OmniOPD: logit-free on-policy distillation from black-box teachers.

Shared pieces live here (settings, logging, the toy world, evaluation); the three processes
are ``omniopd.gateway`` (services/teacher_gateway), ``omniopd.verifier`` (services/verifier)
and ``omniopd.trainer`` (trainer/).
"""

__version__ = "0.1.0"
