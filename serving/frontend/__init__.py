"""Front-end workers: processes beside `serve` that take the HTTP and gRPC connections.

With ``--frontend-workers N`` the process the user started (the *owner*) loads the models
and runs the batchers, as with none; N worker processes (`serving.frontend.worker`, no
torch in them) listen on the public ports (SO_REUSEPORT), decode and check infer requests,
and hand their tensors to the owner through shared memory (`arena`) over one Unix socket
each (`ipc`, `channel`); everything else they pass on, as raw bytes, to the owner's own
HTTP and gRPC transports on private Unix sockets (`forward`), so that every answer but the
infer fast path is the one-process server's. `owner` is the owner's side: the private
listeners, the hand-off socket, and starting, restarting and stopping the workers.

The trade: the owner's event loop no longer parses HTTP or runs grpcio's calls, so each
request costs it less (measured on the ``simple`` model: about a quarter less over HTTP,
nearly half over gRPC), while the request's total CPU grows (the worker's front end plus the
hand-off). Workers pay off when the owner's loop is the limit and there are cores for them.
"""
