"""Links: how a message gets from one end to the other (the Link interface and the transports: ZeroMQ, credit
pipe, CurveZMQ, in-memory, thread links; paths/ for tensor bytes sent out of band). Imports wire/ only."""
