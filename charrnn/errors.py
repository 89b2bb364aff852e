"""The errors charrnn reports to users: one line each, with a documented exit code."""


class CharrnnError(Exception):
    """A runtime or data failure the user can act on (exit 1)."""

    exit_code = 1


class UsageError(CharrnnError):
    """Bad flags or arguments (exit 2)."""

    exit_code = 2


class CheckpointError(CharrnnError):
    """A model file that is missing, corrupt, foreign or unsafe (exit 1)."""


class Interrupted(CharrnnError):
    """Stopped by a signal after saving (exit 128 + signal number: 130 for SIGINT, 143 for SIGTERM,
    129 for SIGHUP)."""

    def __init__(self, exit_code: int, message: str = ""):
        super().__init__(message)
        self.exit_code = exit_code
