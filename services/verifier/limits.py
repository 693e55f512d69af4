"""Request size limits (413), checked before any work is queued."""

from __future__ import annotations

from collections.abc import Sequence

from omniopd.verifier.errors import too_large
from omniopd.verifier.protocol import ScoreRequest
from omniopd.verifier.settings import VerifierSettings


def check_score_limits(req: ScoreRequest, s: VerifierSettings) -> None:
    """Raise 413 naming the first field past a limit: groups, texts, characters."""
    if len(req.groups) > s.max_groups:
        raise too_large("groups", len(req.groups), s.max_groups, "groups", "max_groups")
    n_texts = sum(len(g.drafts) + len(g.teacher) for g in req.groups)
    if n_texts > s.max_texts:
        raise too_large("texts", n_texts, s.max_texts, "groups", "max_texts")
    total = 0
    for i, group in enumerate(req.groups):
        for field, texts in (("drafts", group.drafts), ("teacher", group.teacher)):
            for k, text in enumerate(texts):
                if len(text) > s.max_text_chars:
                    param = f"groups[{i}].{field}[{k}]"
                    raise too_large(
                        "characters", len(text), s.max_text_chars, param, "max_text_chars"
                    )
                total += len(text)
        if group.context is not None:
            total += len(group.context)
    if total > s.max_request_chars:
        raise too_large("characters", total, s.max_request_chars, "groups", "max_request_chars")


def check_embedding_limits(texts: Sequence[str], s: VerifierSettings) -> None:
    if len(texts) > s.max_texts:
        raise too_large("texts", len(texts), s.max_texts, "input", "max_texts")
    for i, text in enumerate(texts):
        if len(text) > s.max_text_chars:
            raise too_large(
                "characters", len(text), s.max_text_chars, f"input[{i}]", "max_text_chars"
            )
    total = sum(len(t) for t in texts)
    if total > s.max_request_chars:
        raise too_large("characters", total, s.max_request_chars, "input", "max_request_chars")
