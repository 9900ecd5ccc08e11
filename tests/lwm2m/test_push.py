"""Push into Object 5 resource 0 (Package): the server fetches the envelope from the firmware
server and writes it block-wise (Block1, 1024-byte blocks) to a device whose Firmware Update
Delivery Method (5/0/9) is push only.

The device here is a small aiocoap LwM2M device written for the test (lwm2m-node-lib's client
decodes every written payload as UTF-8, so a binary envelope cannot reach it): Objects 3 and
5 over plain text, the package handed to a real suitkit device folder's consumer."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiocoap  # type: ignore[import-untyped]
import aiocoap.resource  # type: ignore[import-untyped]
from aiocoap.numbers.codes import Code  # type: ignore[import-untyped]

from device.device_kit import boot, install
from lwm2m.lwm2m_kit import World, states, world
from notice_kit import wait_until

WAIT = 90.0


class _Value(aiocoap.resource.ObservableResource):  # type: ignore[misc]
    def __init__(self, value: object) -> None:
        super().__init__()
        self.value = value

    def set(self, value: object) -> None:
        self.value = value
        self.updated_state()

    async def render_get(self, request: Any) -> Any:
        return aiocoap.Message(payload=str(self.value).encode(), content_format=0)


class PushDevice:
    """An LwM2M device (push only) on its own event loop thread, backed by ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.state, self.result = _Value(0), _Value(0)
        self.received: list[bytes] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.context: Any = None

    def _site(self) -> Any:
        device = self
        site = aiocoap.resource.Site()

        class Package(aiocoap.resource.Resource):  # type: ignore[misc]
            async def render_put(self, request: Any) -> Any:
                device.received.append(bytes(request.payload))
                device.result.set(0)
                device.state.set(2)  # Downloaded: the whole package arrived
                return aiocoap.Message(code=Code.CHANGED)

        class Update(aiocoap.resource.Resource):  # type: ignore[misc]
            async def render_post(self, request: Any) -> Any:
                device.state.set(3)
                asyncio.get_running_loop().create_task(device._install())
                return aiocoap.Message(code=Code.CHANGED)

        for path, resource in ((("3", "0", "0"), _Value("suitkit test")),
                               (("5", "0", "0"), Package()), (("5", "0", "1"), _Value("")),
                               (("5", "0", "2"), Update()), (("5", "0", "3"), self.state),
                               (("5", "0", "5"), self.result), (("5", "0", "9"), _Value(1))):
            site.add_resource(path, resource)
        return site

    async def _install(self) -> None:
        outcome = await asyncio.get_running_loop().run_in_executor(
            None, install, self.folder, self.received[-1])
        self.state.set(0)
        self.result.set(1 if outcome.installed else 8)

    def register(self, w: World, endpoint: str) -> Any:
        async def run() -> Any:
            self.context = await aiocoap.Context.create_server_context(
                self._site(), bind=("127.0.0.1", 0), transports=["udp6"])
            message = aiocoap.Message(code=Code.POST, payload=b"</3/0>,</5/0>",
                                      uri=f"coap://127.0.0.1:{w.lwm2m.port}/rd")
            message.opt.uri_query = (f"ep={endpoint}", "lt=300", "lwm2m=1.1", "b=U")
            return await asyncio.wait_for(self.context.request(message).response, 30)
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(60)

    def stop(self) -> None:
        if self.context is not None:
            asyncio.run_coroutine_threadsafe(self.context.shutdown(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()


@contextmanager
def push_device(folder: Path) -> Iterator[PushDevice]:
    device = PushDevice(folder)
    device.thread.start()
    try:
        yield device
    finally:
        device.stop()


def test_push_writes_the_envelope_block_wise_into_the_package_resource(tmp_path: Path) -> None:
    with world(tmp_path) as w:
        folder, device_id = w.device()
        release = w.release()
        with push_device(folder) as device:
            assert device.register(w, device_id).code == Code.CREATED
            w.deploy(release, device_id)
            wait_until(lambda: w.record(device_id)["state"] in ("succeeded", "failed"), WAIT,
                       "the pushed update to end")
            with w.client() as c:
                envelope = c.get(release["envelope"]["url"]).content
        assert device.received == [envelope] and len(envelope) > 1024  # several blocks
        # Downloading was never seen (the package came whole): filled in, "passed through"
        history = [h for h in w.history(device_id) if h["kind"] == "event"]
        assert states(history) == ["notified", "downloading", "downloaded", "installing",
                                   "rebooting", "succeeded"]
        assert history[1]["detail"].endswith("(passed through)")
        assert [i.sequence_number for i in boot(folder).images] == [w.sequence]


def test_an_envelope_over_the_push_limit_fails_the_update_and_is_not_sent(
        tmp_path: Path) -> None:
    with world(tmp_path, max_package=1000) as w:
        folder, device_id = w.device()
        release = w.release()
        with push_device(folder) as device:
            assert device.register(w, device_id).code == Code.CREATED
            w.deploy(release, device_id)
            wait_until(lambda: w.record(device_id)["state"] == "failed", WAIT,
                       "the oversized push to fail the update")
            assert device.received == []
        detail = w.history(device_id)[-1]["detail"]
        assert "over the push limit of 1000 bytes" in detail, detail
        assert [i.sequence_number for i in boot(folder).images] == [1]
