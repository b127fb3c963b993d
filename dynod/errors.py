"""Errors a user can act on: each names the problem and the fix."""

from __future__ import annotations


class DynodError(Exception):
    """A refused request. `status` is the HTTP status the API answers with."""

    def __init__(self, problem: str, fix: str = "", status: int = 400) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix
        self.status = status

    def __str__(self) -> str:
        return f"{self.problem} ({self.fix})" if self.fix else self.problem

    def to_json(self) -> dict[str, str]:
        return {"error": self.problem, "fix": self.fix}


class NotFound(DynodError):
    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__(problem, fix, status=404)
