"""What can go wrong in ops outside the server: the admin client, and launching a child process."""

from __future__ import annotations

from tenants.errors import SqlfleetError


class ClientError(SqlfleetError):
    """The admin client could not do what was asked; `message` is one line fit for a terminal."""

    code = "client_error"


class InvalidArgument(ClientError):
    """A tenant id, group name or rollout id given on the command line that is not one (sent,
    "../x" would change the URL itself): refused before asking the server, a usage error (the
    CLI exits 2)."""

    code = "invalid_argument"


class ServerUnreachable(ClientError):
    """No HTTP answer came back from the server."""

    code = "server_unreachable"


class ApiError(ClientError):
    """The server answered with an error: its HTTP status, its error code and its message.
    (`http_status`/`error_code`, since `status`/`code` are the class-level fields of every error.)"""

    code = "api_error"

    def __init__(self, http_status: int, error_code: str, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.error_code = error_code


class LaunchError(SqlfleetError):
    """A child process did not start or did not become ready; the message ends with its log."""

    code = "child_process"
