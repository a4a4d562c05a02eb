"""A Python `websockets` client against a realtime server: it offers
permessage-deflate as the library does by default, sends a long `say`
(compressed), and reads the event back (compressed by the server).

Usage: websockets_deflate.py WS_URL TEXT
Prints the negotiated extensions on success; exits non-zero otherwise.
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect


async def main(url: str, text: str) -> None:
    async with connect(url, open_timeout=10) as socket:
        extensions = socket.response.headers.get("Sec-WebSocket-Extensions", "")
        await socket.send(json.dumps({"type": "say", "data": {"text": text}}))
        async with asyncio.timeout(10):
            while True:
                frame = json.loads(await socket.recv())
                if "event" in frame and text in json.dumps(frame["event"]):
                    break
        print(extensions)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
