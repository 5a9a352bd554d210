"""ddbackdoor: backdoor attacks (and defenses) against dataset distillation."""

__version__ = "0.1.0"
