"""``omniopd-train`` (also ``python -m omniopd.trainer``, and under ``torchrun``)."""

from __future__ import annotations

from omniopd.log import configure_from_args
from omniopd.trainer.config import parse_config


def main(argv: list[str] | None = None) -> None:
    config, args = parse_config(argv)
    configure_from_args(args)
    from omniopd.trainer.train import train  # torch and transformers load after the flags parse

    train(config)


if __name__ == "__main__":
    main()
