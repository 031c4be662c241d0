"""GPU JPEG decode cannot race the training stream (pytorch/vision#9606): decode_jpeg runs with the
side stream current, the consuming stream waits for it, and every output is recorded on the
consuming stream before the views are cut. No GPU here: the streams are stand-ins that log, the
decode is torchvision's real one on the CPU, and record_stream is logged instead of run.
The race itself runs on a GPU in the device check (`bench/gpu.sh`, section `decode_race`)."""
import contextlib
import io

import pytest
import torch
import torchvision.io
from PIL import Image

from pipeline.contract.views import view_pixels
from trainer import data


class LoggedStream:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def wait_stream(self, other):
        self.log.append(("wait", self.name, other.name))


class LoggedStreams(data.DecodeStreams):
    def __init__(self, log):
        super().__init__(torch.device("cpu"), LoggedStream("side", log))
        self.log, self.consumer, self.active = log, LoggedStream("consumer", log), None

    def current(self):
        return self.consumer

    @contextlib.contextmanager
    def use(self, stream):
        self.active = stream.name
        self.log.append(("current", stream.name))
        try:
            yield
        finally:
            self.active = None
            self.log.append(("current", "consumer"))

    def record(self, tensor, stream):
        self.log.append(("record", tuple(tensor.shape), stream.name))


def jpeg(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return torch.frombuffer(bytearray(out.getvalue()), dtype=torch.uint8)


def test_decode_runs_on_the_side_stream_and_outputs_are_recorded_on_the_consumer(monkeypatch):
    log = []
    streams = LoggedStreams(log)
    real_decode = torchvision.io.decode_jpeg

    def decode(data_, mode, device):
        log.append(("decode", streams.active, str(device)))
        return real_decode(data_, mode=mode)   # the CPU decoder: the same outputs, no stream

    monkeypatch.setattr(torchvision.io, "decode_jpeg", decode)
    batch = {"jpeg": [jpeg(30, 40, 1), jpeg(24, 24, 2)], "url": ["a.tar", "a.tar"], "uid": ["u1", "u2"],
             "view": [[0.0, 0.0, 1.0, 1.0, 0], [0.25, 0.25, 0.5, 0.5, 1]]}
    out = data.decode_on_device(batch, 16, torch.device("cuda"), streams)
    assert log == [("current", "side"), ("decode", "side", "cuda"), ("current", "consumer"),
                   ("wait", "consumer", "side"), ("record", (3, 30, 40), "consumer"),
                   ("record", (3, 24, 24), "consumer")]
    # the views are those of the decoded pixels
    expected = torch.stack([view_pixels(real_decode(j, mode=torchvision.io.ImageReadMode.RGB), v, 16)
                            for j, v in zip(batch["jpeg"], batch["view"])])
    assert torch.equal(out, expected)


def test_gpu_decode_stays_off_by_default():
    from trainer.config import RuntimeConfig

    assert RuntimeConfig().gpu_decode is False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_one_side_stream_per_device():
    device = torch.device("cuda", 0)
    assert data.DecodeStreams.for_device(device).side is data.DecodeStreams.for_device(device).side
