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


def lost_key(mc_id):
    """The meetings other MCs took from an MC: a hash of meeting id to the
    taker's generation, written by the claim script, read and cleared by the
    loser once per interval. Also the name of the channel on which the claim
    script tells the loser at once (channels and keys do not share a
    namespace). ``lua/_fence.lua`` builds the same name."""
    return f"mc:{mc_id}:lost"


def marker_key(mc_id):
    """Set while Redis holds what this MC wrote: gone means Redis lost its
    data (a restart without persistence, a flush), and the MC re-asserts
    what it hosts."""
    return f"mc:{mc_id}:marker"
