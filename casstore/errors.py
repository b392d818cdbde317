"""One small exception hierarchy, mapped to exit codes and errno in one place.

Every error a user can cause or meet is a subclass of :class:`CasError`.  The CLI
turns it into a one-line message and the class's exit code; the FUSE layer turns
it into the class's errno.  Keeping the mapping here (and only here) lets scripts
rely on exit codes as an API, the way borg does.
"""

from __future__ import annotations

import errno as _errno


class CasError(Exception):
    """Base class: a clear, one-line failure."""

    exit_code = 1
    errno = _errno.EIO


class UsageError(CasError):
    """The command line or an argument is wrong."""

    exit_code = 2
    errno = _errno.EINVAL


class StoreError(CasError):
    """The store cannot be opened or has the wrong layout/version."""

    exit_code = 3


class ObjectMissing(StoreError):
    """A referenced object is not in the store."""

    exit_code = 4
    errno = _errno.EIO


class ObjectCorrupt(StoreError):
    """An object's bytes do not hash to its name, or do not parse."""

    exit_code = 5
    errno = _errno.EIO


class FormatError(ObjectCorrupt):
    """An object parsed but violates the format (bad name, wrong type, ...)."""

    exit_code = 6


class NotFound(CasError):
    """A path inside a tree, a ref or a release does not exist."""

    exit_code = 7
    errno = _errno.ENOENT


class UnsupportedFile(CasError):
    """An input file kind that the store refuses (hard link, device, fifo...)."""

    exit_code = 8
    errno = _errno.EINVAL


class NoSpace(CasError):
    """The disk is full (or over quota) while writing."""

    exit_code = 9
    errno = _errno.ENOSPC


class ReleaseError(CasError):
    """Base for release verification failures."""

    exit_code = 10
    errno = _errno.EACCES


class BadSignature(ReleaseError):
    """The release signature does not verify (tampered document)."""

    exit_code = 11


class UntrustedKey(ReleaseError):
    """The release is signed by a key that is not trusted."""

    exit_code = 12


class ReleaseExpired(ReleaseError):
    """The release's expiry time has passed."""

    exit_code = 13


class RollbackRefused(ReleaseError):
    """The release revision is older than one this verifier has already seen."""

    exit_code = 14


class Unsigned(ReleaseError):
    """The document carries no signature at all."""

    exit_code = 15


class KeyFileError(CasError):
    """A key file is missing or malformed."""

    exit_code = 16


class MountError(CasError):
    """Mounting or unmounting failed."""

    exit_code = 17


class NotFollowing(MountError):
    """``cas reload`` on a mount that does not follow new revisions (pinned)."""

    exit_code = 56


class ReloadTimeout(MountError):
    """``cas reload``: the daemon did not report a finished check in time."""

    exit_code = 57


class RemoteError(CasError):
    """Temporary: a source could not be read right now (timeout, EIO or ESTALE on NFS,
    a lost connection, later a 5xx).  Retry later or fail over to another source;
    unlike ObjectMissing and ObjectCorrupt it says nothing about the object itself,
    so wrappers (KnownBad, the object cache) never remember it."""

    exit_code = 18
    errno = _errno.EIO


class ReadOnly(CasError):
    """A write was attempted on a read-only view."""

    exit_code = 19
    errno = _errno.EROFS


class JuliaError(CasError):
    """Root of every error raised by casstore.julia: installing Julia, building a
    depot, or running a job failed.  Refinements below say which part."""

    exit_code = 20


class IndexDamaged(StoreError):
    """The LMDB index cannot be read; ``cas fsck --rebuild-index`` recreates it."""

    exit_code = 30


class GcRefused(StoreError):
    """gc found damage while marking and deleted nothing (it would lose live data)."""

    exit_code = 31


class FileChanged(CasError):
    """A file kept changing while ``put`` read it, so no consistent copy was taken."""

    exit_code = 34


class NameTooLong(UnsupportedFile):
    """A file name longer than the format's 255-byte limit (FORMAT §4)."""

    exit_code = 35


class UnsafeFolder(CasError):
    """A folder the client writes and later trusts (the client cache, the object cache,
    a job's scratch depot) that someone else could write into: not a directory owned
    by this user, writable by group or others, or not creatable.  Refused, since a
    planted file or symlink there could turn the (root) daemon against the node, or
    hand a job another user's precompile caches.  ``cas doctor`` applies the same rule
    (``casstore.fileio.fsutil.private_dir_problem``)."""

    exit_code = 21
    errno = _errno.EACCES


class MirrorError(CasError):
    """``cas mirror`` cannot write its destination (not a folder it may write)."""

    exit_code = 22


class MirrorIncomplete(MirrorError):
    """A mirror run copied what it could, but some objects or release documents failed
    (corrupt or missing in the source): the releases that need them were not written."""

    exit_code = 23


class MirrorBusy(MirrorError):
    """Another ``cas mirror`` is writing the same destination right now."""

    exit_code = 24


class IsAMirror(MirrorError):
    """A plain mirror folder (no lock, no index) given where a writable store is needed,
    or a writable store given as a mirror destination."""

    exit_code = 25


class RegistryError(CasError):
    """A Julia registry or package source cannot be built or read (bad input)."""

    exit_code = 50


class TreeHashMismatch(RegistryError):
    """Content does not have the git tree SHA-1 it is registered or requested under."""

    exit_code = 51


class VersionConflict(RegistryError):
    """A package version is already registered with different content."""

    exit_code = 52


class ServeError(CasError):
    """``cas serve`` cannot start (bad listen address, no trusted keys, ...)."""

    exit_code = 53


class ServersUnreachable(RemoteError):
    """Every server (and proxy) of an HTTP source failed with a temporary error: the
    node is offline as far as this source goes.  Cached objects still serve; a mount
    may fall back to the last release document it verified (docs/CLIENT.md)."""

    exit_code = 55
    errno = _errno.EIO


class SpecError(JuliaError):
    """The depot spec TOML is malformed: not TOML, an unknown key, a wrong type, a
    missing key, or values that contradict each other."""

    exit_code = 40
    errno = _errno.EINVAL


class UnsupportedJuliaVersion(SpecError):
    """The spec asks for a Julia version the builder has no layout for."""

    exit_code = 41


class UnknownVariant(SpecError):
    """A variant (or the baseline) names no CPU level that nodes can choose."""

    exit_code = 42


class BadCpuTarget(SpecError):
    """A variant's ``cpu_target`` names a CPU or feature this Julia's LLVM lacks.

    LLVM only warns and builds a generic image on an unknown name, so the spec is
    checked before anything runs."""

    exit_code = 43


class SpecPathError(SpecError):
    """A path in the spec is missing, of the wrong kind, or escapes the depot."""

    exit_code = 44
    errno = _errno.ENOENT


class PackageMismatch(SpecError):
    """A package source disagrees with the spec (name, uuid, version, layout, deps)."""

    exit_code = 45


class ManifestError(SpecError):
    """The user's Manifest.toml cannot be used: not Julia 1.5's format (a
    ``manifest_format = "2.0"`` file from Julia 1.6+), an entry that is neither a
    stdlib, a registered version nor a path package, or one the spec contradicts."""

    exit_code = 36


class PackageUnavailable(SpecError):
    """A manifest entry's git tree SHA-1 is in none of the places the spec names
    (the registry release in the store, the Pkg server, the folder of bundles)."""

    exit_code = 37
    errno = _errno.ENOENT


class SourceTreeMismatch(SpecError):
    """A package source offers the manifest's version under another git tree SHA-1
    (a re-tagged bundle), or downloaded content does not hash to what was asked."""

    exit_code = 38


class PackageFetchError(JuliaError):
    """A Pkg server could not be read while fetching packages for a build (network,
    HTTP error other than 404, a broken tarball): temporary, retry later."""

    exit_code = 39


class BuildError(JuliaError):
    """A build stage (trace, sysimage, link, precompile, validation) failed."""

    exit_code = 46


class SysimageError(BuildError):
    """A Julia or linker step of the sysimage build failed (refines BuildError)."""


class InstallError(JuliaError):
    """Julia is not installed where the spec says, or the installer failed."""

    exit_code = 47


class NamespaceError(JuliaError):
    """Private mount namespaces are unavailable (the build needs root and unshare)."""

    exit_code = 48
    errno = _errno.EPERM


class JobError(JuliaError):
    """A Julia job (or its setup step) could not be run for a check."""

    exit_code = 49


class ComposeRefused(JuliaError):
    """Builders' part releases are missing, untrusted or built from other inputs,
    so no composed release is signed."""

    exit_code = 26


class JuliaTimeout(JuliaError):
    """A Julia process ran past its time limit and was killed (keeps code 20)."""


class VariantRefused(CasError):
    """No variant of the release may run here: each is above the host's (or forced) level."""

    exit_code = 27
    errno = _errno.EACCES


class MountBusy(MountError):
    """``cas umount``: files on the mount are in use (``--lazy`` detaches anyway)."""

    exit_code = 29
    errno = _errno.EBUSY


class UnmountIncomplete(MountError):
    """``cas umount``: the mount is gone here but its daemon lives on, because another
    mount namespace holds a copy of the mount, or (``--lazy``) files are still open."""

    exit_code = 33
    errno = _errno.EBUSY


class NotACasMount(MountError):
    """``cas umount`` was pointed at something that is not a casstore FUSE mount."""

    exit_code = 28


class TransferError(CasError):
    """``cas push``/``cas pull`` failed: the server refused, or answered nonsense."""

    exit_code = 60


class TokenError(CasError):
    """A write token is missing, refused, or the server's token file is damaged."""

    exit_code = 61


class PushRefused(TransferError):
    """The server refused a release (untrusted key, not newer, objects missing)."""

    exit_code = 62


class DoctorFailed(CasError):
    """``cas doctor`` found at least one check that fails (each is named on stdout)."""

    exit_code = 58


def all_error_classes() -> list[type[CasError]]:
    """Every CasError subclass, for the uniqueness check in the tests."""
    seen: list[type[CasError]] = []
    todo: list[type[CasError]] = [CasError]
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    return seen
