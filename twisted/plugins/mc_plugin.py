from twisted.application.service import ServiceMaker

mc = ServiceMaker(
    "Meeting Controller", "mc.tap", "Host meetings assigned by the Global Controller.", "mc"
)
