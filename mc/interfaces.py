"""The seams between the MC's parts; every implementation and double is checked
with ``verifyObject`` against these."""

from zope.interface import Attribute, Interface


class IFencedStore(Interface):
    """Meeting keys in the fleet's shared Redis, every write fenced by generation.

    Methods return Deferreds. Failures: ``mc.errors.FencedOut`` when the stored
    generation is above the writer's (nothing changed), ``mc.errors.CorruptGeneration``
    when the stored generation is not an integer (nothing changed), and
    ``mc.errors.StoreUnavailable`` when Redis cannot be reached or did not answer
    in time.
    """

    connected = Attribute("True while a connection to Redis is up right now.")

    def claim(meeting_id):
        """Increment the meeting's generation (a new meeting starts at 1) and
        fire with the new one: the caller's ownership epoch."""

    def claim_and_write(meeting_id, mc_id, assignment, state):
        """Claim and write the MH assignment and the state hash in one atomic
        step; fire with the new generation."""

    def write_assignment(meeting_id, generation, assignment):
        """Fenced SET of ``meeting:<id>:mh`` to the JSON of ``assignment``."""

    def write_state(meeting_id, generation, fields):
        """Fenced HSET of ``fields`` (plus ``generation``) into ``meeting:<id>:state``."""

    def delete(meeting_id, generation):
        """Fenced delete of the meeting's mh and state keys (the generation key
        stays, so generations never go backwards)."""

    def read_generation(meeting_id):
        """Fire with the stored generation, or None for an unknown meeting."""

    def read_assignment(meeting_id):
        """Fire with the decoded MH assignment dict, or None."""


class IGcClient(Interface):
    """The MC's calls to the Global Controller; each returns a Deferred firing
    with the response message or failing with ``mc.errors.GcCallError``."""

    def register(request):
        """RegisterMC."""

    def fast_heartbeat(request):
        """FastHeartbeat."""

    def comprehensive_heartbeat(request):
        """ComprehensiveHeartbeat."""

    def notify_meeting_ended(request):
        """NotifyMeetingEnded."""

    def close():
        """Release the channel; no call may be made afterwards."""


class ITokenCheck(Interface):
    """Decides whether a bearer token presented by the GC is acceptable."""

    def check(authorization):
        """Return True when the raw ``authorization`` metadata value is
        ``Bearer <a configured token>``; must run in constant time per token and
        is called from non-reactor threads."""


class ISystemProbe(Interface):
    """CPU and memory usage of this process's container or host."""

    def cpu_percent():
        """CPU use since the previous call, 0..100, without blocking."""

    def memory_percent():
        """Memory in use against the applicable limit, 0..100."""
