"""Errors a user can cause: the CLI prints them as one line each and exits with code 2 (3: a run whose model
weights changed, :class:`ModelsChangedError`)."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (a recipe, a path, a flag), reported without a traceback.

    Args:
        message: One line saying what is wrong and, where it helps, what to do instead.
    """

    exit_code = 2

    def lines(self) -> list[str]:
        """The lines the CLI prints for this error."""
        return [str(self)]


class StaleRunError(UserError):
    """A run hm3 wrote that cannot be resumed only because what it was scored with is gone — its model weights
    changed since it started (a rebuilt zoo), or an older hm3 wrote its log in another format: exit code 3, so
    that a script can start such a run afresh and stop on any other refusal (``make demo``).

    Every other reason not to resume (an edited recipe, changed task or data files, a damaged or missing
    fingerprint, another process in the run) is a plain :class:`UserError`, exit code 2.
    """

    exit_code = 3


class ModelsChangedError(StaleRunError):
    """A run that cannot be resumed only because its model weights changed since it started."""


class RecipeError(UserError):
    """A recipe that does not validate: one problem per line, each naming the YAML path of the field.

    Args:
        problems: ``(yaml_path, message)`` pairs, e.g. ``("agent.gamma", "must be in (0, 1]")``.
        source: The recipe file the problems were found in.
    """

    def __init__(self, problems: list[tuple[str, str]], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        super().__init__("; ".join(f"{path}: {msg}" for path, msg in problems))

    def lines(self) -> list[str]:
        prefix = f"{self.source}: " if self.source else ""
        return [f"{prefix}{path}: {msg}" if path else f"{prefix}{msg}" for path, msg in self.problems]


class ModelError(UserError):
    """A problem with one model of the pool (missing, incompatible, unsafe to load).

    Args:
        model: The model's name (``base`` for the base model).
        message: What is wrong with it.
    """

    def __init__(self, model: str, message: str) -> None:
        self.model = model
        self.detail = message
        super().__init__(f"model {model}: {message}")


class BudgetSpent(Exception):
    """A method asked for a new candidate its budget cannot pay for (:mod:`hm3.search.budget`); not a user
    error: each method ends its search on it, and a path search (:mod:`hm3.routing.agent`) pays a path it
    cannot score fully nothing."""
