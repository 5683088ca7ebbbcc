"""Media handlers heard: the MediaCoordinationService servicer.

An MH reports each participant's media connection opening
(NotifyParticipantConnected) and closing (NotifyParticipantDisconnected). The
calls reach this servicer only past the gRPC server's service-token check
(``media-handler``). Each id must be 1-256 bytes, else INVALID_ARGUMENT
"Invalid request"; any other call is acknowledged at once, and the report
handed to the reactor, where it is kept on the participant (``mc.meetings``:
at most 1,000 connections per meeting) only when this MC hosts the meeting
and knows the participant. A flood of reports about anything else costs no
memory; a participant's connections go when it leaves, a meeting's when it
ends or moves.
"""

import grpc
from google.protobuf.message import DecodeError
from twisted.logger import Logger

from mc.meetings import RECORDED
from mc.proto import media_pb2

SERVICE = media_pb2.DESCRIPTOR.services_by_name["MediaCoordinationService"].full_name
MAX_ID_BYTES = 256
INVALID = "Invalid request"

CONNECTED = "connected"
DISCONNECTED = "disconnected"
#: ``mc_mh_reports_total`` outcomes besides ``mc.meetings``'.
INVALID_OUTCOME = "invalid"
UNKNOWN_MEETING = "unknown_meeting"
UNKNOWN_PARTICIPANT = "unknown_participant"
REMOVED = "removed"
NOT_CONNECTED = "not_connected"


def thd_request(message_class, raw, context):
    """The parsed request when it parses and its three ids are 1-256 bytes;
    otherwise the call is aborted with INVALID_ARGUMENT (``abort`` raises)."""
    try:
        request = message_class.FromString(raw)
    except DecodeError:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, INVALID)
    for value in (request.meeting_id, request.participant_id, request.handler_id):
        if not value or len(value.encode("utf-8")) > MAX_ID_BYTES:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, INVALID)
    return request


class MediaCoordination:
    """The servicer (``handler()`` for the MC's one gRPC server) and the
    reactor side that keeps what the MHs report on the registry's meetings."""

    log = Logger()

    def __init__(self, registry, reactor, metrics):
        self._registry = registry
        self._reactor = reactor
        self._metrics = metrics
        metrics.media_connections.set_function(registry.media_connections)

    def handler(self):
        """A grpc GenericRpcHandler serving MediaCoordinationService."""
        return grpc.method_handlers_generic_handler(SERVICE, {
            "NotifyParticipantConnected": grpc.unary_unary_rpc_method_handler(
                self.thd_connected,
                response_serializer=media_pb2.NotifyParticipantConnectedResponse
                .SerializeToString),
            "NotifyParticipantDisconnected": grpc.unary_unary_rpc_method_handler(
                self.thd_disconnected,
                response_serializer=media_pb2.NotifyParticipantDisconnectedResponse
                .SerializeToString),
        })

    # --- grpc worker threads ----------------------------------------------

    def thd_connected(self, raw, context):
        request = self._thd_valid(media_pb2.NotifyParticipantConnectedRequest, raw, context,
                                  CONNECTED)
        self._reactor.callFromThread(self.connected, request.meeting_id,
                                     request.participant_id, request.handler_id)
        return media_pb2.NotifyParticipantConnectedResponse(acknowledged=True)

    def thd_disconnected(self, raw, context):
        request = self._thd_valid(media_pb2.NotifyParticipantDisconnectedRequest, raw, context,
                                  DISCONNECTED)
        self._reactor.callFromThread(self.disconnected, request.meeting_id,
                                     request.participant_id, request.handler_id)
        return media_pb2.NotifyParticipantDisconnectedResponse(acknowledged=True)

    def _thd_valid(self, message_class, raw, context, kind):
        try:
            return thd_request(message_class, raw, context)
        except Exception:
            # prometheus_client's counters are thread-safe.
            self._metrics.mh_reports.labels(kind, INVALID_OUTCOME).inc()
            raise

    # --- reactor thread ---------------------------------------------------

    def connected(self, meeting_id, participant_id, handler_id):
        """``handler_id`` says the participant's media connection to it opened."""
        meeting, p, outcome = self._find(meeting_id, participant_id)
        if p is not None:
            outcome = meeting.media_connected(p, handler_id)
            if outcome == RECORDED:
                self.log.debug("participant {participant_id} of meeting {meeting_id} connected "
                               "to media handler {handler_id}", participant_id=participant_id,
                               meeting_id=meeting_id, handler_id=handler_id)
        self._metrics.mh_reports.labels(CONNECTED, outcome).inc()

    def disconnected(self, meeting_id, participant_id, handler_id):
        """``handler_id`` says the participant's media connection to it closed."""
        meeting, p, outcome = self._find(meeting_id, participant_id)
        if p is not None:
            outcome = REMOVED if meeting.media_disconnected(p, handler_id) else NOT_CONNECTED
        self._metrics.mh_reports.labels(DISCONNECTED, outcome).inc()

    def _find(self, meeting_id, participant_id):
        meeting = self._registry.get(meeting_id)
        if meeting is None:
            return None, None, UNKNOWN_MEETING
        p = meeting.participant(participant_id)
        return meeting, p, None if p is not None else UNKNOWN_PARTICIPANT
