"""Exceptions that cross module boundaries. None of them carries a secret."""


class ConfigError(ValueError):
    """A configuration value is missing or wrong; ``option`` names it the way
    the operator wrote it (env var and flag)."""

    def __init__(self, option, problem):
        super().__init__(f"{option}: {problem}")
        self.option = option
        self.problem = problem


class KeyMismatch(ConfigError):
    """A certificate and a key that are each readable but not a pair: during a
    rotation, one of the two files may be written before the other."""


class StoreError(Exception):
    """Base of every failure of the fenced store."""


class StoreUnavailable(StoreError):
    """Redis could not be reached or did not answer in time."""


class ReplicasShort(StoreUnavailable):
    """Fewer online replicas than a claim needs (a replica syncing, gone),
    or fewer acknowledged it within the replica timeout: the claim does not
    count, and the store is unavailable for health until they are back."""


class FencedOut(StoreError):
    """Another MC holds this meeting (a newer generation, or the state hash
    names it); nothing changed. ``stored_generation`` is 0 when there is none."""

    def __init__(self, meeting_id, generation, stored_generation):
        super().__init__(
            f"meeting {meeting_id}: generation {generation} fenced out "
            f"(stored generation {stored_generation})"
        )
        self.meeting_id = meeting_id
        self.generation = generation
        self.stored_generation = stored_generation


class CorruptGeneration(StoreError):
    """The stored generation is not an integer; it is left as found."""

    def __init__(self, meeting_id):
        super().__init__(f"meeting {meeting_id}: stored generation is not an integer")
        self.meeting_id = meeting_id


class CallError(Exception):
    """A gRPC call to a peer failed; ``code`` is the ``grpc.StatusCode`` name
    (e.g. ``"NOT_FOUND"``, ``"UNAVAILABLE"``)."""

    def __init__(self, method, code, details=""):
        super().__init__(f"{method}: {code}: {details}")
        self.method = method
        self.code = code
        self.details = details


class GcCallError(CallError):
    """A call to the GC failed; ``dialect`` is the dialect of its last
    attempt (None when it was never sent: no service token)."""

    def __init__(self, method, code, details="", dialect=None):
        super().__init__(method, code, details)
        self.dialect = dialect


class InvalidToken(Exception):
    """A meeting token failed a check. ``why`` is for our debug logs only
    (never a token's content); the client hears only "invalid or expired token"."""

    def __init__(self, why):
        super().__init__(why)
        self.why = why


class NoJwks(Exception):
    """No JWKS was ever loaded, so no meeting token can be checked."""


class MhCallError(CallError):
    """A call to a media handler failed (``"UNAVAILABLE"`` too when it could
    not be reached within the connect timeout)."""
