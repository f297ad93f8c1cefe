"""File-system helpers shared by every reader and writer: format detection and safe writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..errors import ImageReadError, ImageWriteError

#: File name endings and the format they stand for.
SUFFIX_FORMATS: dict[str, str] = {
    ".dcm": "dicom", ".dicom": "dicom", ".ima": "dicom",
    ".png": "png",
    ".jpg": "jpeg", ".jpeg": "jpeg",
    ".tif": "tiff", ".tiff": "tiff",
    ".nii": "nifti", ".nii.gz": "nifti",
    ".npy": "npy",
}


def full_suffix(path: str | os.PathLike[str]) -> str:
    """Lower-case suffix, treating ``.nii.gz`` as one suffix.

    Only known suffixes count: ``MR.1.3.12.2.1107`` (a DICOM file named by its UID) has none.
    """
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    suffix = Path(name).suffix
    return suffix if suffix in SUFFIX_FORMATS else ""


def stem(path: str | os.PathLike[str]) -> str:
    """File name without its (possibly double) suffix."""
    name = Path(path).name
    suffix = full_suffix(path)
    return name[: len(name) - len(suffix)] if suffix else name


def _looks_like_dicom(path: Path) -> bool:
    """The DICOM preamble and prefix, or a dataset without them (:func:`_bare_dataset`)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(BARE_HEAD)
    except OSError:
        return False
    return (len(head) >= 132 and head[128:132] == b"DICM") or _bare_dataset(head)


#: Bytes read to recognise a file as DICOM.
BARE_HEAD = 1024
#: The value representations (PS3.5 6.2), and those with a 4-byte length in explicit VR.
_VRS = frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV "
                 b"TM UC UI UL UN UR US UT UV".split())
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ UC UN UR UT SV UV".split())


def _bare_dataset(head: bytes) -> bool:
    """Whether ``head`` starts like a dataset without preamble and prefix, which PS3.10
    requires but old files and some archives leave out: a first element (0002,00xx) or
    (0008,00xx), little endian, in explicit or implicit VR, with an even length, followed by
    an element of the same or a later group at a higher tag. Two elements in a row keep raw
    16-bit data that happen to start with 8 or 2 out."""
    def u16(at: int) -> int:
        return int.from_bytes(head[at: at + 2], "little")

    if len(head) < 16 or u16(0) not in (0x0002, 0x0008) or u16(2) > 0x0020:
        return False
    vr = head[4:6]
    if vr in _VRS:
        length, start = ((int.from_bytes(head[8:12], "little"), 12) if vr in _LONG_VRS
                         else (u16(6), 8))
    else:
        length, start = int.from_bytes(head[4:8], "little"), 8
    following = start + length
    if length % 2 or following + 4 > len(head):
        return False
    group, element = u16(following), u16(following + 2)
    return (group, element) > (u16(0), u16(2)) and group in (0x0002, 0x0008, 0x0010, 0x0018,
                                                             0x0020, 0x0028)


def sniff_format(path: str | os.PathLike[str]) -> str | None:
    """The format ``path``'s first bytes show (a format name of :data:`SUFFIX_FORMATS`, or
    ``"text"``), whatever its suffix says; ``None`` when they show none of them. Only used to
    explain a failed read."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(348)
    except OSError:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[128:132] == b"DICM" or _bare_dataset(head):   # first: a preamble can look like TIFF
        return "dicom"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if len(head) == 348 and head[344:347] in (b"n+1", b"ni1"):
        return "nifti"
    if head.startswith(b"\x1f\x8b"):
        return None                    # gzip: a .nii.gz, or anything else
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "text"
    return None


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of ``path``: by its suffix, or for files without one by their first bytes
    being DICOM (the preamble, or a dataset without it)."""
    p = Path(path)
    fmt = SUFFIX_FORMATS.get(full_suffix(p))
    if fmt is not None:
        return fmt
    if p.is_file() and _looks_like_dicom(p):
        return "dicom"
    raise ImageReadError(p, f"unknown file type {p.suffix or '(no suffix)'}; supported: "
                         + ", ".join(sorted(set(SUFFIX_FORMATS))))


def is_image_file(path: Path) -> bool:
    """Whether ``path`` is a file medenhance would try to read (by suffix, or being DICOM)."""
    if not path.is_file() or path.name.startswith("."):
        return False
    if path.name.upper() == "DICOMDIR":   # a CD's index of its files, never an image
        return False
    return full_suffix(path) in SUFFIX_FORMATS or _looks_like_dicom(path)


def find_images(inputs: Iterable[str | os.PathLike[str]] | str | os.PathLike[str], *,
                recursive: bool = True,
                errors: list[str] | None = None,
                skipped: list[Path] | None = None,
                repeated: list[Path] | None = None) -> list[Path]:
    """Expand files and folders into a sorted list of image files.

    Folders are searched (recursively by default) for files with a known suffix or a DICOM
    preamble. A named file is always returned, so that a bad file gets its own error later.
    Other files found in folders (not hidden ones) are appended to ``skipped``, when given, so
    that a caller can say what it left out. A file reached twice (a folder and a file or
    sub-folder in it) is listed once, and appended to ``repeated`` when given.

    Raises
    ------
    ImageReadError
        If an input does not exist, or a folder holds no image files; when an ``errors`` list is
        given, the messages are appended to it instead and the other inputs are still searched.
    """
    if isinstance(inputs, (str, os.PathLike)):        # one path, not its characters
        inputs = [inputs]
    found: dict[Path, Path] = {}    # each file once, as first found (`A A/x.png`, `A A/sub`)
    others: dict[Path, Path] = {}
    for item in inputs:
        try:
            for f in _expand(Path(item), recursive, None if skipped is None else others):
                if _place(f) in found:
                    if repeated is not None:
                        repeated.append(f)
                    continue
                found[_place(f)] = f
        except ImageReadError as exc:
            if errors is None:
                raise
            errors.append(str(exc))
    if skipped is not None:
        skipped.extend(others.values())
    return list(found.values())


def _place(path: Path) -> Path:
    """Where ``path`` lies: its real folder and its own name. Two names for one file through
    a linked folder are one place; two links to one file (git-annex, DataLad) are two."""
    return path.parent.resolve() / path.name


def _walk(folder: Path) -> Iterator[Path]:
    """Every entry below ``folder``, following linked folders (a site's data is often a link)
    but entering each real folder once, so that a link loop ends. Hidden folders (``.git``,
    whose git-annex objects are the dataset's images again) are not entered."""
    seen: set[str] = set()
    for root, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in dirs + files:
            yield Path(root) / name


def _expand(p: Path, recursive: bool, skipped: dict[Path, Path] | None = None) -> list[Path]:
    if p.is_dir():
        walker: Iterator[Path] = _walk(p) if recursive else p.glob("*")
        # A broken link with an image's suffix is returned too: reading it fails with a reason
        # that the batch lists, instead of the file silently vanishing.
        files, others = [], []
        for f in walker:
            if is_image_file(f) or (f.is_symlink() and not f.exists()
                                    and full_suffix(f) in SUFFIX_FORMATS):
                files.append(f)
            elif not f.is_dir() and f.name.upper() != "DICOMDIR" and not any(
                    part.startswith(".") for part in f.relative_to(p).parts):
                others.append(f)
        files.sort()
        if skipped is not None:
            for f in sorted(others):
                skipped.setdefault(_place(f), f)
        if not files:
            raise ImageReadError(p, "folder contains no image files (DICOM, PNG, JPEG, TIFF, "
                                    "NIfTI or .npy)")
        return files
    if p.exists():
        return [p]
    raise ImageReadError(p, "no such file or folder")


def _link_chain(path: Path) -> list[Path]:
    """``path`` and every path its links lead through, in order, each with its folder's links
    resolved (``fd/1`` under a link to ``/dev/fd`` is ``/dev/fd/1``)."""
    def real(p: Path) -> Path:
        return Path(os.path.realpath(p.parent)) / p.name

    chain = [real(Path(os.path.abspath(path)))]
    while chain[-1].is_symlink():
        if len(chain) >= 40:
            raise RuntimeError("link loop")
        link = chain[-1]
        chain.append(real(Path(os.path.abspath(link.parent / os.readlink(link)))))
    return chain


def writable_target(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """The file that writing ``path`` would replace (a link's target), after the checks that
    :func:`atomic_write` makes, so that a command can make them before its work."""
    target = Path(path)
    # /dev/stdout resolves to whatever fd 1 is (a log file, say), which a rename would replace:
    # no step of a link chain may pass through /dev or /proc (/dev/shm holds plain files).
    try:
        chain = _link_chain(target)
        if target.is_symlink():
            target = target.resolve()  # the file it names, also when that is not there yet
    except (OSError, RuntimeError):    # a link loop
        raise ImageWriteError(Path(path), "is a link that leads in a loop") from None
    device = any(str(step).startswith(("/dev/", "/proc/")) and not
                 str(step).startswith("/dev/shm/") for step in chain)
    if device and not os.path.lexists(path):
        raise ImageWriteError(Path(path), "lies under /dev or /proc (devices and processes, "
                                          "not files); write to a file elsewhere")
    if device or (target.exists() and not target.is_file()):
        raise ImageWriteError(Path(path), "is not a regular file (a folder, device or pipe); "
                                          "write to a file")
    if target.exists() and not overwrite:
        raise ImageWriteError(Path(path), "file exists (pass --overwrite, or overwrite=True in "
                                          "Python, to replace it)")
    check_parent_folder(target, Path(path))
    return target


def check_parent_folder(target: Path, named: Path | None = None) -> None:
    """Refuse ``target`` when the nearest folder above it that exists is a file, or cannot be
    written in (the error names ``named``, the path as the user gave it)."""
    for parent in target.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise ImageWriteError(named or target, f"{parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                try:
                    read_only = bool(os.statvfs(parent).f_flag & os.ST_RDONLY)
                except OSError:
                    read_only = False
                why = "a read-only file system" if read_only else "permission denied"
                raise ImageWriteError(named or target, f"cannot write in {parent} ({why})")
            return


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None], *,
                 overwrite: bool = False) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    An interrupted or failed write leaves nothing behind, and an existing file is only replaced
    when ``overwrite`` is true. A link is written through (the file it points to is replaced, the
    link stays); a device, pipe or folder is never replaced.
    """
    target = writable_target(path, overwrite=overwrite)
    try:
        if not target.parent.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
        # A short name: the target's own may be near the file system's 255-byte limit.
        fd, tmp_name = tempfile.mkstemp(prefix=".medenhance-", suffix=".tmp" + full_suffix(target),
                                        dir=target.parent)
    except OSError as exc:      # named by the file the user asked for, not the temporary one
        raise ImageWriteError(Path(path), exc.strerror or str(exc)) from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp creates 0600; give the file the permissions a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except ImageWriteError:
        tmp.unlink(missing_ok=True)
        raise
    except OSError as exc:      # e.g. a full disk: named by the target, not the temporary file
        tmp.unlink(missing_ok=True)
        raise ImageWriteError(Path(path), exc.strerror or str(exc)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
