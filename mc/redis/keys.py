"""The one home of the fleet's Redis key names (see the GC-MC contract)."""


def generation_key(meeting_id):
    """The fencing generation: an integer that only ever increases."""
    return f"meeting:{meeting_id}:generation"


def mh_key(meeting_id):
    """The MH assignment JSON."""
    return f"meeting:{meeting_id}:mh"


def state_key(meeting_id):
    """The owning MC's metadata hash (at least ``mc_id`` and ``generation``)."""
    return f"meeting:{meeting_id}:state"


def meetings_index_key(mc_id):
    """The set of meeting ids an MC claimed, for its restart recovery: the MC's
    own key, not part of the shared contract. ``lua/_fence.lua`` builds the
    same name from a state hash's ``mc_id``."""
    return f"mc:{mc_id}:meetings"
