"""Tests for the evidence layer: manifests, folder scans, image validation and synthetic artists."""
from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from audit.data import (
    ImageRejected,
    load_evidence,
    read_manifest,
    scan_folder,
    sha256_file,
    validate_and_load,
    write_manifest,
)
from audit.groundtruth.synthetic import ARTISTS, make_artwork_folder, render_artwork
from audit.types import EvidenceSet, ImageRecord, Rejection

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _save_rgb(path: Path, size: tuple[int, int] = (24, 16), seed: int = 0, fmt: str = "PNG") -> Path:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _write_bomb_png(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose IHDR declares a huge image (the pixel data is a few bytes and never decoded)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    )
    return path


def _truncated_png(path: Path) -> Path:
    buf = io.BytesIO()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


# --------------------------------------------------------------------------------------------------
# manifests
# --------------------------------------------------------------------------------------------------


def _entries(tmp_path: Path) -> list[dict]:
    a = _save_rgb(tmp_path / "imgs" / "a.png", seed=1)
    b = _save_rgb(tmp_path / "imgs" / "b.png", seed=2)
    return [
        {
            "path": str(a),
            "role": "suspect",
            "caption": "a cat, with a comma",
            "artist": "alice",
            "created": "2021-03-04",
        },
        {"path": str(b), "role": "control", "caption": "", "artist": "", "created": ""},
    ]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_manifest_round_trip(tmp_path: Path, suffix: str) -> None:
    entries = _entries(tmp_path)
    mpath = write_manifest(entries, tmp_path / f"manifest{suffix}")
    # paths inside the manifest's folder are stored relative, so the folder can be moved as a unit
    assert "imgs/a.png" in mpath.read_text()
    assert str(tmp_path) not in mpath.read_text()
    back = read_manifest(mpath)
    assert [{k: e[k] for k in ("path", "role", "caption", "artist", "created")} for e in back] == entries


def test_manifest_relative_paths_resolve_against_manifest_folder(tmp_path: Path) -> None:
    sub = tmp_path / "case"
    sub.mkdir()
    (sub / "m.csv").write_text("path,role\nworks/x.png,suspect\n/abs/y.png,control\n")
    out = read_manifest(sub / "m.csv")
    assert out[0]["path"] == str(sub / "works" / "x.png")
    assert out[1]["path"] == "/abs/y.png"
    assert out[0]["caption"] == "" and out[0]["artist"] == "" and out[0]["created"] == ""


def test_manifest_bad_role_names_the_line(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_text("path,role,caption\na.png,suspect,x\nb.png,suspekt,y\n")
    with pytest.raises(ValueError, match=r"m\.csv:line 3: unknown role 'suspekt'"):
        read_manifest(m)


def test_manifest_missing_column_names_the_line(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    m.write_text("path,caption\na.png,x\n")
    with pytest.raises(ValueError, match=r"line 1: missing required column\(s\) 'role'"):
        read_manifest(m)


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    m = tmp_path / "m.jsonl"
    m.write_text('{"path": "a.png", "role": "suspect"}\n\n{"path": "b.png", "role": "control"\n')
    with pytest.raises(ValueError, match=r"m\.jsonl:line 3: malformed JSON"):
        read_manifest(m)
    m.write_text('{"path": "a.png", "role": "suspect"}\n{"path": "b.png"}\n')
    with pytest.raises(ValueError, match=r"line 2: missing required field\(s\) 'role'"):
        read_manifest(m)
    m.write_text('{"path": "a.png", "role": "witness"}\n')
    with pytest.raises(ValueError, match=r"line 1: unknown role 'witness'"):
        read_manifest(m)


def test_manifest_unsupported_suffix(tmp_path: Path) -> None:
    m = tmp_path / "m.xlsx"
    m.write_text("x")
    with pytest.raises(ValueError, match="unsupported manifest type"):
        read_manifest(m)


def test_write_manifest_requires_roles(tmp_path: Path) -> None:
    entries = _entries(tmp_path)
    entries[1]["role"] = ""
    with pytest.raises(ValueError, match="entry 1"):
        write_manifest(entries, tmp_path / "m.csv")


# --------------------------------------------------------------------------------------------------
# folder scan
# --------------------------------------------------------------------------------------------------


def test_scan_folder(tmp_path: Path) -> None:
    _save_rgb(tmp_path / "suspect" / "alice" / "b.png", seed=1)
    (tmp_path / "suspect" / "alice" / "b.txt").write_text("  a blue bird \n")
    _save_rgb(tmp_path / "suspect" / "a.png", seed=2)
    _save_rgb(tmp_path / "control" / "c.jpg", seed=3, fmt="JPEG")
    (tmp_path / "control" / ".DS_Store").write_bytes(b"\x00\x01")
    (tmp_path / "control" / "notes.doc").write_text("not an image")
    (tmp_path / "README.md").write_text("evidence for case 1")  # loose non-image files are ignored

    entries = scan_folder(tmp_path)
    rel = [(Path(e["path"]).relative_to(tmp_path).as_posix(), e["role"]) for e in entries]
    # roles in ROLES order (suspect before control), then by relative path; hidden files and .txt
    # sidecars skipped, the non-image still listed (to be rejected with a reason later)
    assert rel == [
        ("suspect/a.png", "suspect"),
        ("suspect/alice/b.png", "suspect"),
        ("control/c.jpg", "control"),
        ("control/notes.doc", "control"),
    ]
    assert entries[1]["artist"] == "alice" and entries[1]["caption"] == "a blue bird"
    assert entries[0]["artist"] == "" and entries[0]["caption"] == ""
    assert scan_folder(tmp_path) == entries  # deterministic


def test_scan_folder_rejects_unknown_role_folder_and_loose_images(tmp_path: Path) -> None:
    _save_rgb(tmp_path / "suspects" / "a.png")
    with pytest.raises(ValueError, match="'suspects' are not role names"):
        scan_folder(tmp_path)
    shutil.rmtree(tmp_path / "suspects")
    _save_rgb(tmp_path / "suspect" / "a.png")
    _save_rgb(tmp_path / "stray.png")
    with pytest.raises(ValueError, match="outside any role folder"):
        scan_folder(tmp_path)


def test_scan_folder_without_role_dirs_leaves_role_empty(tmp_path: Path) -> None:
    _save_rgb(tmp_path / "bob" / "a.png")
    entries = scan_folder(tmp_path, role_dirs=False)
    assert len(entries) == 1 and entries[0]["role"] == "" and entries[0]["artist"] == "bob"
    with pytest.raises(ValueError, match="role ''"):
        load_evidence(entries, 8, progress=False)


# --------------------------------------------------------------------------------------------------
# image validation and preprocessing
# --------------------------------------------------------------------------------------------------


def test_bad_files_rejected_with_distinct_reasons_good_ones_load(tmp_path: Path) -> None:
    good1 = _save_rgb(tmp_path / "suspect" / "good1.png", size=(40, 20), seed=1)
    good2 = _save_rgb(tmp_path / "control" / "good2.jpg", size=(300, 200), seed=2, fmt="JPEG")
    corrupt = _truncated_png(tmp_path / "suspect" / "corrupt.png")
    text = tmp_path / "suspect" / "text.png"
    text.write_text("this is not a picture\n")
    bomb = _write_bomb_png(tmp_path / "control" / "bomb.png", 20000, 20000)
    ppm = _save_rgb(tmp_path / "control" / "odd.ppm", fmt="PPM")
    entries = scan_folder(tmp_path)
    entries.append({"path": str(tmp_path / "suspect" / "missing.png"), "role": "suspect"})

    ev = load_evidence(entries, resolution=16, progress=False)
    assert isinstance(ev, EvidenceSet)
    assert [r.path for r in ev.records] == [str(good1), str(good2)]
    assert ev.pixels.dtype == torch.uint8 and tuple(ev.pixels.shape) == (2, 3, 16, 16)
    assert all(isinstance(r, ImageRecord) for r in ev.records)
    assert ev.records[0].image_id == sha256_file(good1)
    assert (ev.records[0].width, ev.records[0].height, ev.records[0].format) == (40, 20, "PNG")
    assert ev.records[1].format == "JPEG"

    reasons = {Path(r.path).name: r.reason for r in ev.rejected}
    assert set(reasons) == {"corrupt.png", "text.png", "bomb.png", "odd.ppm", "missing.png"}
    assert reasons["corrupt.png"].startswith("corrupt image:")
    assert reasons["text.png"] == "not an image file: cannot identify image data"
    assert reasons["bomb.png"] == (
        "image too large: 20000x20000 = 400.0 Mpx exceeds limit 100 Mpx (possible decompression bomb)"
    )
    assert reasons["odd.ppm"] == "not a supported image (format PPM)"
    assert reasons["missing.png"] == "file not found"
    assert len(set(reasons.values())) == len(reasons)
    # every rejection keeps its role and, where the file could be read, its hash
    by_name = {Path(r.path).name: r for r in ev.rejected}
    assert all(isinstance(r, Rejection) for r in ev.rejected)
    assert by_name["bomb.png"].role == "control" and by_name["bomb.png"].sha256 == sha256_file(bomb)
    assert by_name["missing.png"].sha256 is None
    assert by_name["corrupt.png"].sha256 == sha256_file(corrupt)
    assert by_name["text.png"].sha256 == sha256_file(text) and ppm.exists()


def test_header_check_happens_before_decoding(tmp_path: Path) -> None:
    # 400 Mpx RGB would need 1.2 GB to decode; the rejection must come from the header alone.
    bomb = _write_bomb_png(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(ImageRejected, match="possible decompression bomb") as exc:
        validate_and_load(bomb, 32)
    assert isinstance(exc.value, ValueError)
    # the limit is a parameter, not only PIL's global
    small = _save_rgb(tmp_path / "small.png", size=(100, 100))
    with pytest.raises(ImageRejected, match=r"100x100 = 0\.0 Mpx exceeds limit 0\.005 Mpx"):
        validate_and_load(small, 8, max_pixels=5_000)
    arr, info = validate_and_load(small, 8, max_pixels=10_000)
    assert arr.shape == (8, 8, 3)


def test_other_rejections(tmp_path: Path) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageRejected, match=r"empty file \(0 bytes\)"):
        validate_and_load(tmp_path / "empty.png", 8)
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageRejected, match="not a regular file"):
        validate_and_load(tmp_path / "dir.png", 8)


def test_output_shape_dtype_and_centre_crop(tmp_path: Path) -> None:
    # 60x20: red | green | blue thirds. Shorter side -> 12, centre crop keeps the green middle third.
    arr = np.zeros((20, 60, 3), dtype=np.uint8)
    arr[:, :20, 0] = 255
    arr[:, 20:40, 1] = 255
    arr[:, 40:, 2] = 255
    Image.fromarray(arr).save(tmp_path / "wide.png")
    out, info = validate_and_load(tmp_path / "wide.png", 12)
    assert out.dtype == np.uint8 and out.shape == (12, 12, 3) and out.flags.writeable
    assert info["width"] == 60 and info["height"] == 20 and info["format"] == "PNG"
    assert np.all(out[:, 2:10, 1] >= 250) and np.all(out[:, 2:10, 0] <= 5) and np.all(out[:, 2:10, 2] <= 5)


def test_upscales_small_images(tmp_path: Path) -> None:
    path = _save_rgb(tmp_path / "tiny.bmp", size=(5, 7), fmt="BMP")
    out, info = validate_and_load(path, 32)
    assert out.shape == (32, 32, 3) and info["format"] == "BMP"


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)  # transparent *black*: must become white, not black
    rgba[:, :8] = (255, 0, 0, 255)  # left half opaque red
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    out, info = validate_and_load(tmp_path / "rgba.png", 16)
    assert info["mode"] == "RGBA"
    assert tuple(out[8, 15]) == (255, 255, 255)
    assert tuple(out[8, 0]) == (255, 0, 0)

    Image.fromarray(np.zeros((8, 8, 4), dtype=np.uint8), mode="RGBA").save(tmp_path / "clear.png")
    out, _ = validate_and_load(tmp_path / "clear.png", 4)
    assert np.all(out == 255)

    # palette image with a transparent index
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (0, 0, 4, 8))
    pal.save(tmp_path / "pal.png", transparency=0)
    out, _ = validate_and_load(tmp_path / "pal.png", 8)
    assert tuple(out[4, 7]) == (255, 255, 255) and tuple(out[4, 0]) == (0, 0, 255)

    # greyscale + alpha
    la = Image.new("LA", (8, 8), (0, 0))
    la.save(tmp_path / "la.png")
    out, _ = validate_and_load(tmp_path / "la.png", 8)
    assert np.all(out == 255)


def test_animated_gif_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    out, info = validate_and_load(tmp_path / "anim.gif", 8)
    assert info["n_frames"] == 2 and info["format"] == "GIF"
    assert out[..., 0].min() > 200 and out[..., 2].max() < 60


def test_exif_orientation_applied(tmp_path: Path) -> None:
    # stored 32x16, top half red, bottom half blue; orientation 6 = display rotated 90° clockwise,
    # so the displayed image is 16x32 with the red half on the right.
    arr = np.zeros((16, 32, 3), dtype=np.uint8)
    arr[:8, :, 0] = 255
    arr[8:, :, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    out, info = validate_and_load(tmp_path / "rot.jpg", 16)
    assert info["exif_orientation"] == 6
    assert out[8, 2, 2] > 200 and out[8, 2, 0] < 60  # left: blue
    assert out[8, 13, 0] > 200 and out[8, 13, 2] < 60  # right: red


def test_large_jpeg_uses_draft_and_matches_shape(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    Image.new("RGB", (1200, 900), (10, 200, 30)).save(path, quality=90)
    out, info = validate_and_load(path, 32)
    assert out.shape == (32, 32, 3) and (info["width"], info["height"]) == (1200, 900)
    assert abs(int(out[16, 16, 1]) - 200) <= 3


# --------------------------------------------------------------------------------------------------
# duplicates
# --------------------------------------------------------------------------------------------------


def test_duplicates(tmp_path: Path) -> None:
    a = _save_rgb(tmp_path / "a.png", seed=1)
    b = tmp_path / "b.png"
    shutil.copy(a, b)
    c = _save_rgb(tmp_path / "c.png", seed=2)
    d = _save_rgb(tmp_path / "d.png", seed=3)
    entries = [
        {"path": str(a), "role": "suspect"},
        {"path": str(b), "role": "suspect"},  # same bytes, same role -> later copy is a duplicate
        {"path": str(c), "role": "suspect"},
        {"path": str(c), "role": "control"},  # same file, two roles -> every listing is rejected
        {"path": str(d), "role": "control"},
    ]
    ev = load_evidence(entries, 8, progress=False)
    assert [r.path for r in ev.records] == [str(a), str(d)]
    assert tuple(ev.pixels.shape) == (2, 3, 8, 8)
    reasons = [(Path(r.path).name, r.role, r.reason) for r in ev.rejected]
    assert reasons == [
        ("b.png", "suspect", f"duplicate of {a} (manifest entry 1) (same bytes, same role: counted once)"),
        # the other listing is the same path: its reason names the entry, not (again) its own path
        ("c.png", "suspect", "same file also listed as role control (the same path listed again as manifest entry "
                             "4): the role assignment contradicts itself, so every listing is excluded"),
        ("c.png", "control", "same file also listed as role suspect (the same path listed again as manifest entry "
                             "3): the role assignment contradicts itself, so every listing is excluded"),
    ]
    assert ev.rejected[0].sha256 == ev.records[0].image_id


def test_load_evidence_pixels_match_validate_and_load(tmp_path: Path) -> None:
    entries = make_artwork_folder(tmp_path, ["stripes", "grid"], per_artist=3, size=16, seed=0)
    for e in entries:
        e["role"] = "member"
    ev = load_evidence(entries, 16, progress=False)
    assert len(ev) == 6 and not ev.rejected
    for i, e in enumerate(entries):
        arr, _ = validate_and_load(e["path"], 16)
        assert torch.equal(ev.pixels[i], torch.from_numpy(arr).permute(2, 0, 1))
        # a PNG rendered at the model resolution survives preprocessing unchanged
        assert np.array_equal(arr, render_artwork(e["artist"], i % 3, size=16, seed=0))
    b = ev.batch(0, 2)
    assert b.dtype == torch.float32 and float(b.min()) >= -1.0 and float(b.max()) <= 1.0


def test_empty_evidence(tmp_path: Path) -> None:
    ev = load_evidence([{"path": str(tmp_path / "nope.png"), "role": "suspect"}], 8, progress=False)
    assert len(ev) == 0 and tuple(ev.pixels.shape) == (0, 3, 8, 8) and len(ev.rejected) == 1


# --------------------------------------------------------------------------------------------------
# synthetic artists
# --------------------------------------------------------------------------------------------------


def test_synthetic_deterministic() -> None:
    assert len(ARTISTS) >= 4
    for artist in ARTISTS:
        a = render_artwork(artist, 3, size=32, seed=7)
        assert a.dtype == np.uint8 and a.shape == (32, 32, 3)
        assert a.tobytes() == render_artwork(artist, 3, size=32, seed=7).tobytes()
        assert not np.array_equal(a, render_artwork(artist, 3, size=32, seed=8))
    with pytest.raises(ValueError, match="unknown synthetic artist"):
        render_artwork("picasso", 0)


def test_synthetic_works_individual_and_artists_distinguishable() -> None:
    n = 40
    X = {
        a: np.stack([render_artwork(a, i, 32, 0) for i in range(n)]).reshape(n, -1).astype(np.float64)
        for a in ARTISTS
    }
    for a, x in X.items():
        d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
        off = d[~np.eye(n, dtype=bool)]
        # no two works of one artist are near-identical (an attack must be able to tell them apart)
        assert off.min() > 500, (a, off.min())

    def mean_dist(u: np.ndarray, v: np.ndarray) -> float:
        return float(np.sqrt(((u[:, None] - v[None]) ** 2).sum(-1)).mean())

    within = np.mean([mean_dist(X[a], X[a]) for a in ARTISTS])
    between = np.mean([mean_dist(X[a], X[b]) for a in ARTISTS for b in ARTISTS if a != b])
    assert between > 1.15 * within, (between, within)

    # colour statistics identify the artist: nearest centroid on per-image mean/std colour
    def feats(x: np.ndarray) -> np.ndarray:
        px = x.reshape(len(x), -1, 3)
        return np.concatenate([px.mean(1), px.std(1)], axis=1)

    cent = {a: feats(X[a][: n // 2]).mean(0) for a in ARTISTS}
    correct = [
        min(ARTISTS, key=lambda b: np.linalg.norm(f - cent[b])) == a for a in ARTISTS for f in feats(X[a][n // 2 :])
    ]
    assert np.mean(correct) > 0.9


def test_make_artwork_folder(tmp_path: Path) -> None:
    e1 = make_artwork_folder(tmp_path / "one", ["waves", "circles"], per_artist=3, size=16, seed=5)
    e2 = make_artwork_folder(tmp_path / "two", ["waves", "circles"], per_artist=3, size=16, seed=5)
    assert [Path(e["path"]).name for e in e1] == [
        "waves_0000.png", "waves_0001.png", "waves_0002.png",
        "circles_0000.png", "circles_0001.png", "circles_0002.png",
    ]
    assert all(e["role"] == "" and "in the style of " + e["artist"] in e["caption"] and e["created"] for e in e1)
    # PNG bytes are deterministic, so image ids are stable across runs
    assert [sha256_file(e["path"]) for e in e1] == [sha256_file(e["path"]) for e in e2]
    assert [{k: v for k, v in e.items() if k != "path"} for e in e1] == [
        {k: v for k, v in e.items() if k != "path"} for e in e2
    ]
    json.dumps(e1)  # plain, serialisable entries


def test_truncated_file_rejected_even_if_pil_was_told_to_pad(tmp_path: Path, monkeypatch) -> None:
    """WeasyPrint (PDF reports) flips PIL's process-wide LOAD_TRUNCATED_IMAGES on import; the loader must
    still refuse a truncated artwork instead of silently padding it with grey."""
    from PIL import ImageFile

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageRejected, match="corrupt image"):
        validate_and_load(_truncated_png(tmp_path / "half.png"), 16)


# --------------------------------------------------------------------------------------------------
# near-duplicates, symlinks (issue 11)
# --------------------------------------------------------------------------------------------------


def test_reencoded_jpeg_copy_of_a_control_listed_as_suspect_is_caught(tmp_path: Path) -> None:
    entries = make_artwork_folder(tmp_path / "works", ["stripes", "circles", "grid", "waves"], per_artist=6,
                                  size=256, seed=0)
    for i, e in enumerate(entries):
        e["role"] = "suspect" if i % 3 == 0 else "control"
    control = next(e for e in entries if e["role"] == "control")
    copy = tmp_path / "copy.jpg"
    Image.open(control["path"]).convert("RGB").resize((200, 200)).save(copy, quality=70)  # new bytes, same work
    ev = load_evidence([*entries, {"path": str(copy), "role": "suspect"}], 32, progress=False,
                       check_near_duplicates=True)
    assert len(load_evidence([*entries, {"path": str(copy), "role": "suspect"}], 32, progress=False)) == len(entries) + 1
    near = {Path(r.path).name: r.reason for r in ev.rejected if "near-duplicate" in r.reason}
    # both listings are excluded, each reason naming the other one and the distance
    assert set(near) == {Path(control["path"]).name, "copy.jpg"}
    assert f"near-duplicate of {copy} listed as role suspect" in near[Path(control["path"]).name]
    assert "RMS difference" in near["copy.jpg"] and "both listings are excluded" in near["copy.jpg"]
    # distinct works of the same synthetic artists are never mistaken for copies
    assert len(ev) == len(entries) - 1 and not [r for r in ev.rejected if r.path not in (str(copy), control["path"])]


def test_near_duplicates_are_not_distinct_works(tmp_path: Path) -> None:
    """The thresholds separate copies from the closest distinct works: small shapes on white, 64 px."""
    from PIL import ImageDraw

    from audit.data.near_duplicates import find_near_duplicates

    rng = np.random.default_rng(0)
    arrs = []
    for _ in range(60):
        im = Image.new("RGB", (128, 128), "white")
        d = ImageDraw.Draw(im)
        x, y, r = int(rng.integers(30, 100)), int(rng.integers(30, 100)), int(rng.integers(6, 20))
        d.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        arrs.append(np.asarray(im))
    pixels = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()
    assert find_near_duplicates(pixels) == []
    buf = io.BytesIO()
    Image.fromarray(arrs[7]).save(buf, "JPEG", quality=60)
    copy = torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1)[None]
    pairs = find_near_duplicates(torch.cat([pixels, copy]))
    assert [(p.i, p.j) for p in pairs] == [(7, 60)]


def test_symlink_records_its_resolved_target(tmp_path: Path) -> None:
    target = _save_rgb(tmp_path / "real" / "work.png", seed=4)
    link = tmp_path / "link.png"
    link.symlink_to(target)
    ev = load_evidence([{"path": str(link), "role": "suspect"}], 8, progress=False)
    (rec,) = ev.records
    assert rec.path == str(link) and rec.resolved_path == str(target.resolve())
    assert ev.image_table()["resolved_path"].tolist() == [str(target.resolve())]
