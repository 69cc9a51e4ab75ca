#!/usr/bin/env python3
"""asyncserve: a python3 asyncio server on a listening TCP socket.

Usage: asyncserve.py

It builds a table of 200,000 keys ("k<i>" -> str(i * i)) so that it holds
some memory, makes its listening socket itself on 127.0.0.1 (an ephemeral
port; made by hand so that asyncio needs no getaddrinfo, whose executor would
start a thread), prints "ready port=<port>" and serves with
asyncio.start_server: each client sends one line, a key, and gets back
"<n> <key> <value>" where n counts the clients served since the start. The
line "quit" makes it answer "bye" and exit 0.

It renames itself "asyncserve" (prctl PR_SET_NAME) so that tests can find it.
"""

import asyncio
import ctypes
import socket
import sys

PR_SET_NAME = 15


def main():
    ctypes.CDLL(None).prctl(PR_SET_NAME, b"asyncserve", 0, 0, 0)
    table = {f"k{i}": str(i * i) for i in range(200_000)}
    state = {"served": 0}
    done = None

    async def handle(reader, writer):
        line = (await reader.readline()).decode().strip()
        if line == "quit":
            writer.write(b"bye\n")
            done.set()
        else:
            state["served"] += 1
            writer.write(f"{state['served']} {line} {table.get(line)}\n".encode())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def serve():
        nonlocal done
        done = asyncio.Event()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        sock.setblocking(False)
        server = await asyncio.start_server(handle, sock=sock)
        print(f"ready port={sock.getsockname()[1]}", flush=True)
        async with server:
            await done.wait()
        print(f"served {state['served']}", flush=True)

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
