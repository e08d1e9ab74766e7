#!/usr/bin/env python3
"""Opens N keep-alive HTTP/1.1 connections to HOST:PORT, sends one GET on each and reads its
response, then holds them all open for SECONDS. Prints how many
connections got a complete 200 response. Used by benches/compare.sh to read a gateway's RSS
with 10,000 open keep-alive connections.

  benches/hold_connections.py 127.0.0.1 8080 /hello.example/hello?name=w 10000 30
"""
import asyncio
import resource
import sys


async def one(host, port, path, held, ok):
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return
    held.append(writer)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, OSError):
        return
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    try:
        await asyncio.wait_for(reader.readexactly(length), 30)
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, OSError):
        return
    if head.startswith(b"HTTP/1.1 200"):
        ok.append(1)


async def main():
    host, port, path, n, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 100)), hard))
    held, ok = [], []
    # In waves, so that the listen backlog is not the limit.
    for start in range(0, n, 500):
        await asyncio.gather(*(one(host, port, path, held, ok) for _ in range(start, min(n, start + 500))))
    print(f"{len(ok)} of {n} connections answered 200 and held open", flush=True)
    await asyncio.sleep(seconds)
    for w in held:
        w.close()


asyncio.run(main())
