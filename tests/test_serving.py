"""The fisa_python model against the REAL Triton server: the tritonserver bundled in nvidia-pytriton, on
127.0.0.1 with free ports, serving the embedded model on CPU (one server for the module, always stopped).
Skips, saying what to install, only where that wheel or its numpy<2 folder is absent (README's test command
installs both, so CI runs these)."""

import concurrent.futures
import gc
import json
import os
import sys

import numpy as np
import pytest
import torch

from fisa_rt.errors import InputError, MissingDependencyError
from fisa_rt.runtime.assets import default_checkpoint, sample_images
from fisa_rt.runtime.segmenter import Segmenter

pytest.importorskip("tritonclient.http", reason="tritonclient is not installed: pip install -e '.[test]'")

from fisa_rt.serving import bundled  # noqa: E402
from fisa_rt.serving import client as client_module  # noqa: E402
from fisa_rt.serving.client import ServerError, ServerSegmenter  # noqa: E402
from fisa_rt.serving.repository import PythonModelOptions, read_config, write_config, write_python_model  # noqa: E402

VOCABULARIES = [["red star", "blue circle", "wavy wall"], ["green triangle", "yellow square"], ["red star"]]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    try:
        numpy1 = bundled.numpy1_dir()
        bundled.pytriton_dir()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    repository = str(tmp_path_factory.mktemp("repository"))
    # a 100 ms queue delay so concurrent requests meet in one execution; 1 instance x 1 thread on the 2 CI cores
    options = PythonModelOptions(prepend_dirs=[numpy1], instances=1, threads=1, queue_delay_us=100_000,
                                 max_pixels=1_000_000)
    write_python_model(repository, default_checkpoint(), None, options)
    server = bundled.BundledServer(repository)
    server.start()
    server.repository_folder = repository
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def local():
    segmenter = Segmenter.from_engine(default_checkpoint(), threads=1, cache_dir="")
    return segmenter


def local_result(local, image, names, task="panoptic"):
    local.set_vocabulary(names)
    return local.segment(image, task)


def same(a, b):
    return np.array_equal(a.semantic, b.semantic) and a.segments() == b.segments()


def test_bad_client_arguments_are_named_before_any_request(monkeypatch):
    """No server needed: each is one InputError naming the argument, not a ServerError blaming a server, and
    tritonclient leaves no half-made client whose __del__ prints "Exception ignored" (port 99999 did)."""
    from fisa_rt.serving.client import parse_url

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    image = np.zeros((8, 8, 3), np.uint8)
    bad = [({"url": None}, "url must be a string"), ({"url": 8000}, "url must be a string"),
           ({"protocol": "ftp"}, r"protocol \(--protocol\) must be one of")]
    bad += [({"url": url}, r"url \(--server\) must be HOST:PORT with a PORT in 1..65535")
            for url in ("localhost:99999", "localhost:0", "::1:8000", "[::1:8000", "localhost:+1", "localhost")]
    bad += [({"timeout": t}, "timeout must be a positive, finite number of seconds; got")
            for t in ("x", -1, 0, float("nan"), float("inf"), True, None)]
    for options, message in bad:
        options = {"url": "localhost:1", **options}
        with pytest.raises(InputError, match=message):
            remote = Segmenter.from_server(options.pop("url"), **options)
            remote.set_vocabulary(["cat"])
            remote.segment(image)
        gc.collect()
    assert not unraisable, [str(u.exc_value) for u in unraisable]
    assert parse_url("[::1]:8000", None) == ("http", "[::1]:8000")
    assert parse_url("grpc://my-host.example:65535", "grpc") == ("grpc", "my-host.example:65535")
    assert Segmenter.from_server("localhost:8000", timeout=np.float32(2.5)).timeout == 2.5


def test_a_request_the_server_cannot_take_now_is_sent_again_then_named(monkeypatch):
    from tritonclient.utils import InferenceServerException

    waits = []
    monkeypatch.setattr(client_module.time, "sleep", waits.append)
    segmenter = ServerSegmenter("localhost:1")
    segmenter.set_vocabulary(["cat"])

    class Client:  # answers with ``replies`` in turn: an exception is raised
        def __init__(self, *replies):
            self.replies, self.calls = list(replies), 0

        def infer(self, *args, **kwargs):
            self.calls += 1
            reply = self.replies.pop(0)
            if isinstance(reply, Exception):
                raise reply
            return reply

    busy = InferenceServerException("out of memory (PyTorch could not allocate 2.0 GiB); the server goes on",
                                    status="503")
    picture = np.zeros((8, 8, 3), np.uint8)
    segmenter._per_thread.client = Client(busy, busy, "response")
    assert segmenter.infer_raw(picture, "panoptic", "rle", 0) == "response" and waits == [0.5, 1.0]
    segmenter._per_thread.client = Client(*[busy] * 4)
    with pytest.raises(ServerError, match=r"failed after 4 tries: out of memory \(PyTorch could not allocate"):
        segmenter.infer_raw(picture, "panoptic", "rle", 0)
    refused = Client(InferenceServerException("20,000 classes exceed", status="400"))
    segmenter._per_thread.client = refused
    with pytest.raises(InputError, match="the server refused the request: 20,000 classes"):
        segmenter.infer_raw(picture, "panoptic", "rle", 0)
    assert refused.calls == 1  # a user's error is not sent again


def test_no_grpc_server_is_named_at_once_though_grpc_calls_it_unavailable():
    import time

    segmenter = ServerSegmenter("localhost:1", protocol="grpc")
    segmenter.set_vocabulary(["cat"])
    start = time.perf_counter()
    with pytest.raises(ServerError, match=r"server localhost:1 \(grpc\) unreachable or gone"):
        segmenter.segment(np.zeros((8, 8, 3), np.uint8))
    assert time.perf_counter() - start < 0.5 * sum(client_module.RETRY_WAITS)  # not sent again


def test_segment_batch_refuses_what_the_local_segmenter_refuses(local):
    remote = Segmenter.from_server("localhost:1")
    remote.set_vocabulary(["cat"])
    for images in (sample_images()[0], np.zeros((2, 8, 8, 3), np.uint8)):  # one image, not a list of them
        with pytest.raises(InputError) as want:
            local.segment_batch(images)
        with pytest.raises(InputError, match="segment_batch takes a list of images") as got:
            remote.segment_batch(images)
        assert str(got.value) == str(want.value)
    for client in (local, remote):  # a bad task is refused even for an empty batch
        with pytest.raises(InputError, match="task must be one of"):
            client.segment_batch([], task="bogus")


def test_the_server_client_keeps_its_own_copy_of_the_vocabulary():
    from fisa_rt.vocab.vocabulary import Vocabulary

    remote = Segmenter.from_server("localhost:1")
    names = Vocabulary(["cat", "dog"])
    remote.set_vocabulary(names)
    names.names.append("bird")  # the caller's own object, changed afterwards
    assert remote.vocabulary.names == ["cat", "dog"]
    with pytest.raises(InputError, match="got bytes"):
        remote.set_vocabulary(b"cat")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_results_equal_local_segmenter(server, local, protocol):
    remote = Segmenter.from_server(server.http if protocol == "http" else server.grpc, protocol=protocol)
    image = sample_images()[0]
    remote.set_vocabulary(VOCABULARIES[0])
    for task in ("panoptic", "instance"):
        got, want = remote.segment(image, task), local_result(local, image, VOCABULARIES[0], task)
        assert same(got, want), task
        if task == "panoptic":
            assert np.array_equal(got.panoptic.segment_map.numpy(), want.panoptic.segment_map.numpy())
        else:
            assert np.array_equal(got.instances.masks.numpy(), want.instances.masks.numpy())


def test_label_maps_downscaled_or_run_length_encoded(server, local):
    remote = Segmenter.from_server(server.http)
    image = np.asarray(sample_images_array()[0])
    remote.set_vocabulary(VOCABULARIES[0])
    want = local_result(local, image, VOCABULARIES[0])
    rle = remote.segment(image, labels="rle")
    assert same(rle, want) and np.array_equal(rle.panoptic.segment_map.numpy(), want.panoptic.segment_map.numpy())
    small = remote.segment(image, max_side=32)
    assert max(small.semantic.shape) == 32 and small.segments() == want.segments()


def sample_images_array():
    from PIL import Image

    return [np.asarray(Image.open(p).convert("RGB")) for p in sample_images()]


def concurrent_requests(server, jobs):
    """``jobs`` [(image, names)] sent at once, one client each; [result or exception]."""
    def one(job):
        image, names = job
        remote = Segmenter.from_server(server.http)
        remote.set_vocabulary(names)
        try:
            return remote.segment(image)
        except Exception as exc:  # noqa: BLE001 - returned for the test to inspect
            return exc

    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        return list(pool.map(one, jobs))


def statistics(server):
    import tritonclient.http as http

    stats = http.InferenceServerClient(server.http).get_inference_statistics("fisa_python")
    return stats["model_stats"][0]["batch_stats"]


def test_concurrent_mixed_vocabularies_are_batched_and_equal_single_requests(server, local):
    images = sample_images_array()
    jobs = [(images[i % len(images)], VOCABULARIES[i % len(VOCABULARIES)]) for i in range(6)]
    results = concurrent_requests(server, jobs)
    for (image, names), got in zip(jobs, results):
        assert not isinstance(got, Exception), got
        assert same(got, local_result(local, image, names))
    assert max(int(s["batch_size"]) for s in statistics(server)) > 1  # the dynamic batcher really batched


def test_a_bad_request_in_a_batch_fails_alone(server, local):
    images = sample_images_array()
    jobs = [(images[0], VOCABULARIES[0])] * 3 + [(np.zeros((1200, 1000, 3), np.uint8), VOCABULARIES[0])]
    results = concurrent_requests(server, jobs)
    assert isinstance(results[-1], InputError) and "pixels" in str(results[-1])
    for got in results[:-1]:
        assert not isinstance(got, Exception), got
        assert same(got, local_result(local, images[0], VOCABULARIES[0]))


def raw_request(server, protocol, image, classes, parameters=None):
    """One request as any client could send it; (status, message), or (None, outputs) on success."""
    import tritonclient.grpc as grpc
    import tritonclient.http as http
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    module = http if protocol == "http" else grpc
    client = module.InferenceServerClient(server.http if protocol == "http" else server.grpc)
    inputs = []
    for name, array in (("image", image), ("classes", classes)):
        tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    try:
        return None, client.infer("fisa_python", inputs, parameters=parameters)
    except InferenceServerException as exc:
        return str(exc.status()), exc.message()


GOOD_IMAGE = np.full((1, 40, 60, 3), 128, np.uint8)
GOOD_CLASSES = np.array([[b"red star", b"wavy wall"]], dtype=np.object_)
BAD_REQUESTS = {
    "wrong dtype": (GOOD_IMAGE.astype(np.float32), GOOD_CLASSES, None, "uint8"),
    "wrong shape": (np.zeros((1, 40, 60, 4), np.uint8), GOOD_CLASSES, None, "shape"),
    "empty class list": (GOOD_IMAGE, np.zeros((1, 0), np.object_), None, "empty"),
    "0-byte image": (np.zeros((1, 0, 0, 3), np.uint8), GOOD_CLASSES, None, "empty"),
    "20,000 classes": (GOOD_IMAGE, np.array([[f"class {i}".encode() for i in range(20_000)]], np.object_), None,
                       "20,000 classes exceed"),
    "image above max_pixels": (np.zeros((1, 1001, 1000, 3), np.uint8), GOOD_CLASSES, None, "more than"),
    "unknown task": (GOOD_IMAGE, GOOD_CLASSES, {"task": "depth"}, "task must be"),
}


def test_a_failed_start_leaves_no_scratch_folder_and_a_stopped_server_starts_again(tmp_path, monkeypatch):
    """The scratch folder (2.8 MB of backends) was made before the try that removes it; a restart wrote its log
    into the folder stop() had removed."""
    try:
        bundled.pytriton_dir()
    except MissingDependencyError as exc:
        pytest.skip(str(exc))
    scratch, repository = tmp_path / "tmp", tmp_path / "empty-repository"
    scratch.mkdir()
    repository.mkdir()
    monkeypatch.setattr(bundled.tempfile, "tempdir", str(scratch))
    server = bundled.BundledServer(str(repository))

    def cannot_run(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    with monkeypatch.context() as patch:
        patch.setattr(bundled.subprocess, "Popen", cannot_run)
        with pytest.raises(PermissionError):
            server.start()
    assert os.listdir(scratch) == []
    for _ in range(2):
        server.start()
        with pytest.raises(bundled.FisaError, match="stop\\(\\) it before starting it again"):
            server.start()
        server.stop()
    assert os.listdir(scratch) == []


def test_ended_threads_leave_no_http_clients_behind(server):
    """A threaded web app: one short-lived thread per request on one client. Each thread's HTTP client and its
    gevent hub were never destroyed (4 descriptors and a native thread per ended thread)."""
    import threading

    client = Segmenter.from_server(server.http, model="fisa_python")
    client.check_ready()

    def descriptors():
        return len(os.listdir("/proc/self/fd"))

    before = descriptors()
    for _ in range(20):
        thread = threading.Thread(target=client.check_ready)
        thread.start()
        thread.join()
    gc.collect()
    assert descriptors() - before <= 8, descriptors() - before
    assert len(client._http_clients) <= 2  # this thread's and the last ended thread's, released at the next


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_bad_requests_get_one_clear_invalid_argument_and_the_server_goes_on(server, protocol):
    for case, (image, classes, parameters, words) in BAD_REQUESTS.items():
        status, message = raw_request(server, protocol, image, classes, parameters)
        assert status in ("400", "StatusCode.INVALID_ARGUMENT"), (case, status, message)
        assert words.lower() in message.lower() and "\n" not in message.strip(), (case, message)
        status, outputs = raw_request(server, protocol, GOOD_IMAGE, GOOD_CLASSES)
        assert status is None, (case, outputs)
        body = json.loads(outputs.as_numpy("result")[0])
        assert body["size"] == [40, 60] and outputs.as_numpy("semantic").shape == (1, 40, 60)


def test_the_model_reloads_after_the_repository_changes(server):
    import tritonclient.http as http

    config_path = os.path.join(server.repository_folder, "fisa_python", "config.pbtxt")
    changed = read_config(config_path)
    changed.parameters["max_classes"].string_value = "2"  # the later tests send at most 2 classes
    write_config(os.path.dirname(config_path), changed)
    http.InferenceServerClient(server.http).load_model("fisa_python")
    three = np.array([[b"red star", b"wavy wall", b"blue circle"]], dtype=np.object_)
    status, message = raw_request(server, "http", GOOD_IMAGE, three)
    assert status == "400" and "limit of 2" in message
    assert raw_request(server, "http", GOOD_IMAGE, GOOD_CLASSES)[0] is None


def test_infer_through_the_server_writes_the_files_local_infer_writes(server, tmp_path):
    from fisa_rt.cli import main

    image = sample_images()[0]
    common = ["--input", image, "--classes", "red star, wavy wall", "--task", "panoptic", "--no-progress"]
    assert main(["infer", "--server", server.grpc, "--protocol", "grpc", "--out", str(tmp_path / "s"), *common]) == 0
    assert main(["infer", "--engine", default_checkpoint(), "--out", str(tmp_path / "l"), *common]) == 0
    served = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert served == sorted(p.name for p in (tmp_path / "l").iterdir()) and len(served) == 4
    for name in served:
        assert (tmp_path / "s" / name).read_bytes() == (tmp_path / "l" / name).read_bytes(), name


def test_an_unreachable_server_or_a_missing_model_is_one_line_before_any_progress(server, tmp_path, capsys):
    """The client is lazy: `infer` met a closed port at its first image, its progress bar already drawn."""
    from fisa_rt.cli import main

    for argv, message in ((["--server", "localhost:1"], "server localhost:1 (http) unreachable or gone"),
                          (["--server", server.http, "--model", "bogus"], "has no model 'bogus' ready")):
        code = main(["infer", *argv, "--classes", "cat", "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], err
        assert not (tmp_path / "o").exists()


def test_zz_a_server_killed_mid_request_is_one_line_and_no_partial_files(server, tmp_path, capsys, monkeypatch):
    """Runs last (it kills the module's server). The server dies after the first of two requests, so the
    second meets a dead server whatever the machine's speed (a timer raced the run on a fast machine)."""
    from fisa_rt.cli import main

    images = tmp_path / "images"
    images.mkdir()
    for i, path in enumerate(sample_images()[:2]):
        (images / f"scene{i}.png").write_bytes(open(path, "rb").read())
    out = tmp_path / "out"
    sent = []
    infer_raw = ServerSegmenter.infer_raw

    def kill_after_first(self, *args, **kwargs):
        if sent:
            server.kill()
        sent.append(1)
        return infer_raw(self, *args, **kwargs)

    monkeypatch.setattr(ServerSegmenter, "infer_raw", kill_after_first)
    code = main(["infer", "--server", server.http, "--input", str(images), "--out", str(out),
                 "--classes", "red star, wavy wall", "--fail-fast", "--no-progress", "--batch", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(sent) == 2
    assert code == 2 and len(err) == 1 and "server" in err[0], err
    leftovers = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert not [n for n in leftovers if "tmp" in n], leftovers  # whole files or none


def test_protocol_round_trip_keeps_every_segment():
    """The server's encoding decoded as the client decodes it (the batch-against-alone test dropped a segment on
    both sides, and the comparison with a local Segmenter needs the bundled server)."""
    from fisa_rt.postprocess import PanopticResult, Segment
    from fisa_rt.runtime.results import SegmentationResult
    from fisa_rt.serving import protocol

    seg_map = torch.zeros(6, 8, dtype=torch.int32)
    seg_map[:3], seg_map[3:, :4] = 1, 2
    semantic = np.zeros((6, 8), np.int64)
    semantic[3:, :4] = 1
    segments = [Segment(1, 0, True, 0.9, 24), Segment(2, 1, False, 0.8, 12)]
    image = np.zeros((6, 8, 3), np.uint8)
    result = SegmentationResult(image, ["cat", "grass"], [True, False], semantic, PanopticResult(seg_map, segments),
                                None)
    for labels in ("full", "rle"):
        out = protocol.encode_result(result, labels, 0)
        body = json.loads(out[protocol.RESULT][0])
        full = labels == "full"
        back = protocol.decode_result(image, ["cat", "grass"], [True, False], "panoptic", body,
                                      out[protocol.SEMANTIC][0] if full else None,
                                      out[protocol.SEGMENT_MAP][0] if full else None)
        assert back.segments() == result.segments() and len(back.segments()) == 2


def test_grpc_invalid_argument_is_an_input_error_sent_once():
    """gRPC's word for a request the server refuses, as HTTP's 400: the user's error, not sent again."""
    from tritonclient.utils import InferenceServerException

    segmenter = ServerSegmenter("localhost:1", protocol="grpc")
    segmenter.set_vocabulary(["cat"])
    calls = []

    class Client:
        def infer(self, *args, **kwargs):
            calls.append(1)
            raise InferenceServerException("20,000 classes exceed", status="StatusCode.INVALID_ARGUMENT")

    segmenter._per_thread.client = Client()
    with pytest.raises(InputError, match="the server refused the request"):
        segmenter.infer_raw(np.zeros((8, 8, 3), np.uint8), "panoptic", "rle", 0)
    assert calls == [1]
