"""Local stand-ins for hosted teacher APIs, for tests only.

These are NOT the Anthropic or OpenAI services. They are small servers written for this test
suite that speak the same wire formats (Anthropic Messages; OpenAI Chat Completions,
Completions and Models), so the official ``anthropic`` and ``openai`` SDKs can be pointed at
them with ``base_url``. Their "model" is a deterministic toy text generator
(:mod:`.textgen`), and they can inject the failures a real API produces: 429 with
``retry-after``, 5xx, slow answers and dropped connections (:mod:`.server`).
"""
