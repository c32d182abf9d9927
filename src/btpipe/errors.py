"""Error types whose messages name the subject and the file at fault."""


class BtpipeError(Exception):
    """Base class for errors btpipe reports to the user in one line."""


class InputError(BtpipeError):
    """Bad input data: a missing, corrupt or unusable file for one subject."""

    def __init__(self, message, subject=None, path=None):
        self.subject = subject
        self.path = str(path) if path is not None else None
        parts = []
        if subject:
            parts.append(f"subject {subject}")
        if path:
            parts.append(f"file {path}")
        prefix = ": ".join([", ".join(parts)]) if parts else ""
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.reason = message


class ConfigError(BtpipeError):
    """A problem with config.yaml or the samples sheet (field and row named)."""
