"""The `hm3` command line."""


def counted(number: int, noun: str) -> str:
    """``1 member``, ``3 members``: a count and its noun, as the commands' summaries print them."""
    return f"{number} {noun}{'' if number == 1 else 's'}"
