# Owns the TensorBoard oracle: the event files moe_tb writes (via tests/tools/tb_write_sample) read back by the real
# tensorboard package: proto field numbers, scalars, histograms, the resume purge, raw records and their CRCs.
"""src/io/tensorboard against the tensorboard package of the venv.

tb_write_sample (a resumed run) writes two event files into one directory: run 1 logs steps 1..4 and its steps 3
and 4 are lost (marked values); run 2 starts with a SessionLog START at step 3 and logs steps 3..5. At each step s
it logs scalar tag i of SCALAR_TAGS = 1/s + 0.25 i (lost: + 100) and, for layers l = 0, 1, an expert-load histogram
with load[e] = (2 s + 3 e + 5 l) % 7 over 8 experts (lost: + 1000). The expected values below come from those
formulas, never from the files. Checks:
- our tb_event.proto, compiled by protoc, has tensorboard's field numbers, types, labels, oneofs and enum values;
- EventAccumulator (keep everything) sees steps 1..5 with float32(formula) scalars and exact histograms: the START
  at step 3 purged run 1's lost steps (without purging they are there, with their marked values);
- tensorboard's histogram migration draws expert e as the bar (e - 0.5, e + 0.5] with height load[e];
- the raw records decode with tensorboard's own Event class, and their framing CRCs agree with tensorboard's
  crc32c; a flipped byte makes tensorboard's record reader report the record (header or data CRC) and stop there.
"""
import os
import re
import shutil
import socket
import struct
import subprocess

import numpy as np
import pytest

import hf_tiny

try:
    from google.protobuf import descriptor_pb2
    from tensorboard import data_compat
    from tensorboard.backend.event_processing import event_accumulator, event_file_loader
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.compat.tensorflow_stub import errors as tb_errors
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow as tb_records
    from tensorboard.util import tensor_util
except ImportError as exc:  # a broken venv must fail loudly, never skip
    raise RuntimeError(f"oracle venv lacks tensorboard ({exc}); run launch/setup.sh") from exc

PROTO = hf_tiny.REPO_ROOT / "src" / "io" / "tensorboard" / "tb_event.proto"
SCALAR_TAGS = ("train/loss", "router/layer0/imbalance")
LAYERS = 2
EXPERTS = 8
RESTART = 3  # run 2's SessionLog START step
RUN1_STEPS = (1, 2, 3, 4)
RUN2_STEPS = (3, 4, 5)
KEPT_STEPS = (1, 2, 3, 4, 5)
LOAD_TAGS = tuple(f"router/layer{l}/expert_load" for l in range(LAYERS))


def scalar_value(i, step, lost=False):
    return 1.0 / step + 0.25 * i + (100.0 if lost else 0.0)


def expert_load(layer, step, lost=False):
    return [(2 * step + 3 * e + 5 * layer) % 7 + (1000 if lost else 0) for e in range(EXPERTS)]


def lost(step, run):
    return run == 1 and step >= RESTART


def f32(x):
    return float(np.float32(x))


def expected_histogram(load):
    """(min, max, num, sum, sum_squares, bucket_limit, bucket) of an expert-load histogram over x = expert index."""
    loaded = [e for e, w in enumerate(load) if w > 0]
    lo, hi = (loaded[0] - 0.5, loaded[-1] + 0.5) if loaded else (-0.5, EXPERTS - 0.5)
    return (lo, hi, float(sum(load)), float(sum(e * w for e, w in enumerate(load))),
            float(sum(e * e * w for e, w in enumerate(load))), [e + 0.5 for e in range(EXPERTS)],
            [float(w) for w in load])


def accumulator(run_dir, purge=True):
    guidance = {kind: 0 for kind in event_accumulator.DEFAULT_SIZE_GUIDANCE}  # 0 = keep every event
    acc = event_accumulator.EventAccumulator(str(run_dir), size_guidance=guidance, purge_orphaned_data=purge)
    acc.Reload()
    return acc


def frames(data):
    """[(offset, length field bytes, length crc, payload, payload crc)] of a TFRecord file, parsed here."""
    out, pos = [], 0
    while pos < len(data):
        assert len(data) - pos >= 16, f"truncated record at byte {pos}"
        (length,) = struct.unpack_from("<Q", data, pos)
        (length_crc,) = struct.unpack_from("<I", data, pos + 8)
        payload = data[pos + 12:pos + 12 + length]
        assert len(payload) == length, f"record at byte {pos} overruns the file"
        (payload_crc,) = struct.unpack_from("<I", data, pos + 12 + length)
        out.append((pos, data[pos:pos + 8], length_crc, payload, payload_crc))
        pos += 16 + length
    return out


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    exe = hf_tiny.build_dir() / "tests" / "tb_write_sample"
    if not exe.exists():
        pytest.fail(f"{exe} not found: build it (cmake --build build --target tb_write_sample) "
                    f"or point MOE_BUILD_DIR at the build directory")
    run_dir = tmp_path_factory.mktemp("tb") / "run"  # not there yet: the writer creates it
    proc = subprocess.Popen([str(exe), str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    paths = out.split()
    assert len(paths) == 2, out
    assert sorted(os.listdir(run_dir)) == sorted(os.path.basename(p) for p in paths)
    # events.out.tfevents.<unix seconds>.<hostname>.<pid>; run 2 (same second) may carry a numeric suffix.
    name = re.compile(r"events\.out\.tfevents\.(\d{10})\." + re.escape(socket.gethostname()) + r"\." +
                      str(proc.pid) + r"(\.\d+)?")
    for p in paths:
        assert name.fullmatch(os.path.basename(p)), p
    assert sorted(paths) == paths, "run 2's file must sort after run 1's (TensorBoard reads files in name order)"
    return run_dir, paths


def test_proto_matches_tensorboard(tmp_path):
    protoc = shutil.which("protoc")
    if protoc is None:
        pytest.fail("protoc not found: install protobuf-compiler (launch/setup.sh)")
    desc_path = tmp_path / "tb_event.desc"
    subprocess.run([protoc, f"-I{PROTO.parent}", f"--descriptor_set_out={desc_path}", PROTO.name], check=True)
    files = descriptor_pb2.FileDescriptorSet.FromString(desc_path.read_bytes()).file
    assert len(files) == 1
    ours = {m.name: m for m in files[0].message_type}
    pairs = [
        (ours["Event"], event_pb2.Event.DESCRIPTOR),
        (ours["SessionLog"], event_pb2.SessionLog.DESCRIPTOR),
        (ours["Summary"], summary_pb2.Summary.DESCRIPTOR),
        (next(n for n in ours["Summary"].nested_type if n.name == "Value"), summary_pb2.Summary.Value.DESCRIPTOR),
        (ours["SummaryMetadata"], summary_pb2.SummaryMetadata.DESCRIPTOR),
        (ours["SummaryMetadata"].nested_type[0], summary_pb2.SummaryMetadata.PluginData.DESCRIPTOR),
        (ours["HistogramProto"], summary_pb2.HistogramProto.DESCRIPTOR),
    ]
    assert set(ours) == {"Event", "SessionLog", "Summary", "SummaryMetadata", "HistogramProto"}
    for mine, theirs in pairs:
        assert mine.name == theirs.name
        assert mine.field, mine.name
        for f in mine.field:
            t = theirs.fields_by_name.get(f.name)
            assert t is not None, f"{mine.name}.{f.name} is not a tensorboard field"
            where = f"{mine.name}.{f.name}"
            assert f.number == t.number, where
            assert f.type == t.type, where
            t_repeated = t.is_repeated if hasattr(t, "is_repeated") else t.label == t.LABEL_REPEATED
            assert (f.label == f.LABEL_REPEATED) == t_repeated, where
            mine_oneof = mine.oneof_decl[f.oneof_index].name if f.HasField("oneof_index") else None
            assert mine_oneof == (t.containing_oneof.name if t.containing_oneof else None), where
            if f.type == f.TYPE_MESSAGE:
                assert f.type_name.rsplit(".", 1)[-1] == t.message_type.name, where
            if f.type == f.TYPE_ENUM:
                assert f.type_name.rsplit(".", 1)[-1] == t.enum_type.name, where
    ours_status = {v.name: v.number for v in ours["SessionLog"].enum_type[0].value}
    theirs_status = {v.name: v.number for v in event_pb2.SessionLog.SessionStatus.DESCRIPTOR.values}
    assert ours_status == theirs_status


def test_accumulator_scalars_after_restart(sample):
    run_dir, _ = sample
    acc = accumulator(run_dir)
    assert acc.file_version == 2.0
    tags = acc.Tags()
    assert sorted(tags["scalars"]) == sorted(SCALAR_TAGS)
    assert sorted(tags["histograms"]) == sorted(LOAD_TAGS)
    for i, tag in enumerate(SCALAR_TAGS):
        got = [(ev.step, ev.value) for ev in acc.Scalars(tag)]
        assert got == [(s, f32(scalar_value(i, s))) for s in KEPT_STEPS], tag


def test_accumulator_histograms_after_restart(sample):
    run_dir, _ = sample
    acc = accumulator(run_dir)
    for layer, tag in enumerate(LOAD_TAGS):
        events = acc.Histograms(tag)
        assert [ev.step for ev in events] == list(KEPT_STEPS), tag
        for ev in events:
            h = ev.histogram_value
            got = (h.min, h.max, h.num, h.sum, h.sum_squares, list(h.bucket_limit), list(h.bucket))
            assert got == expected_histogram(expert_load(layer, ev.step)), (tag, ev.step)


def test_without_purge_the_lost_steps_are_there(sample):
    """The purge above comes from our SessionLog START: with purging off, run 1's lost steps 3, 4 show up."""
    run_dir, _ = sample
    acc = accumulator(run_dir, purge=False)
    order = [(s, 1) for s in RUN1_STEPS] + [(s, 2) for s in RUN2_STEPS]
    for i, tag in enumerate(SCALAR_TAGS):
        got = [(ev.step, ev.value) for ev in acc.Scalars(tag)]
        assert got == [(s, f32(scalar_value(i, s, lost(s, run)))) for s, run in order], tag
    for layer, tag in enumerate(LOAD_TAGS):
        got = [(ev.step, list(ev.histogram_value.bucket)) for ev in acc.Histograms(tag)]
        assert got == [(s, [float(w) for w in expert_load(layer, s, lost(s, run))]) for s, run in order], tag


def test_histogram_migration_draws_one_bar_per_expert(sample):
    """tensorboard's histogram dashboards read histo values through data_compat: expert e must become the bucket
    (e - 0.5, e + 0.5] of height load[e], from the first to the last expert with load."""
    _, paths = sample
    seen = 0
    for run, path in enumerate(paths, start=1):
        for event in event_file_loader.LegacyEventFileLoader(path).Load():
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                if value.tag not in LOAD_TAGS:
                    continue
                layer = LOAD_TAGS.index(value.tag)
                load = expert_load(layer, event.step, lost(event.step, run))
                migrated = data_compat.migrate_value(value)
                assert migrated.metadata.plugin_data.plugin_name == "histograms"
                buckets = tensor_util.make_ndarray(migrated.tensor)
                loaded = [e for e, w in enumerate(load) if w > 0]
                want = np.array([[e - 0.5, e + 0.5, load[e]] for e in range(loaded[0], loaded[-1] + 1)],
                                dtype=np.float32)
                np.testing.assert_array_equal(buckets, want)
                seen += 1
    assert seen == LAYERS * (len(RUN1_STEPS) + len(RUN2_STEPS))
    # The formula gives empty end buckets (dropped by the migration), so min/max are exercised too.
    assert any(expert_load(l, s)[0] == 0 for l in range(LAYERS) for s in KEPT_STEPS)
    assert any(expert_load(l, s)[-1] == 0 for l in range(LAYERS) for s in KEPT_STEPS)


def test_raw_records(sample):
    _, paths = sample
    per_step = len(SCALAR_TAGS) + LAYERS
    for run, path in enumerate(paths, start=1):
        events = list(event_file_loader.LegacyEventFileLoader(path).Load())
        steps = RUN1_STEPS if run == 1 else RUN2_STEPS
        header = 1 if run == 1 else 2  # file_version (+ the SessionLog START of the resumed run)
        assert len(events) == header + per_step * len(steps), path
        assert events[0].WhichOneof("what") == "file_version"
        assert events[0].file_version == "brain.Event:2"
        if run == 2:
            assert events[1].WhichOneof("what") == "session_log"
            assert events[1].session_log.status == event_pb2.SessionLog.START
            assert events[1].step == RESTART
        wall = [e.wall_time for e in events]
        assert wall == sorted(wall)
        assert abs(wall[0] - float(os.path.basename(path).split(".")[3])) < 2.0  # the name's unix seconds
        body = events[header:]
        assert [e.step for e in body] == [s for s in steps for _ in range(per_step)]
        for e in body:
            assert e.WhichOneof("what") == "summary" and len(e.summary.value) == 1
        # Framing parsed here; CRCs by tensorboard's own crc32c.
        records = frames(open(path, "rb").read())
        assert [r[3] for r in records] == list(event_file_loader.RawEventFileLoader(path).Load())
        for offset, length_bytes, length_crc, payload, payload_crc in records:
            assert length_crc == tb_records.masked_crc32c(length_bytes), offset
            assert payload_crc == tb_records.masked_crc32c(payload), offset


def _read_all(path):
    """tensorboard's stub record reader over path: (records read, the error that stopped it or None)."""
    reader = tb_records.PyRecordReader_New(str(path).encode())
    records = []
    while True:
        try:
            reader.GetNext()
        except tb_errors.OutOfRangeError:
            return records, None
        except tb_errors.DataLossError as exc:
            return records, exc
        records.append(reader.record())


@pytest.mark.parametrize("where", ["data", "length"])
def test_flipped_byte_fails_the_crc(sample, tmp_path, where):
    _, paths = sample
    data = bytearray(open(paths[0], "rb").read())
    records = frames(bytes(data))
    k = 5
    offset = records[k][0]
    flip = offset + 12 + len(records[k][3]) // 2 if where == "data" else offset + 1
    data[flip] ^= 0x10
    bad = tmp_path / os.path.basename(paths[0])
    bad.write_bytes(bytes(data))
    good, err = _read_all(paths[0])
    assert err is None and len(good) == len(records)
    got, err = _read_all(bad)
    assert err is not None, "tensorboard's reader accepted a corrupted record"
    assert ("failed event crc32 check" if where == "data" else "failed header crc32 check") in str(err)
    assert got == [r[3] for r in records[:k]]
    # The loader the accumulator uses stops at the bad record (it treats it as a partial write).
    assert list(event_file_loader.RawEventFileLoader(str(bad)).Load()) == got
