"""The JavaScript and CSS that the slides and the HTML copies of the notebooks load, served from disk.

nbconvert's templates load reveal.js, require.js, jQuery, MathJax and the widget manager from CDNs
(unpkg, cdnjs), which a classroom behind a firewall cannot reach. This tool fetches pinned versions of
those packages from the npm registry (`npm pack`: one tarball each, no node_modules, no dependencies),
checks each tarball against the sha512 written here, keeps it in a cache, and copies the few files the
pages need into a `vendor/` folder beside the pages. `urls()` gives nbconvert's settings that point at it.

    python tools/web_assets.py fetch              # fill the cache (make web-assets); needs npm once
    python tools/web_assets.py vendor build/x     # copy the files into build/x/vendor/

The cache is build/web-cache unless SCN_WEB_CACHE names another folder (keep one there to build offline).
"""
import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
VENDOR = "vendor"  # the folder beside the pages


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str  # npm's dist.integrity of the tarball
    copy: Tuple[Tuple[str, str], ...]  # (path inside the package, path inside vendor/); a trailing / copies a folder
    skip: Tuple[str, ...] = (".map",)  # endings of files a folder copy leaves out (source maps are never needed)

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tarball(self) -> str:  # the file name `npm pack` writes
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"


PACKAGES = [
    Package("reveal.js", "4.6.1",
            "sha512-1CW0auaXNPmwmvQ7TwpszwVxMi2Xr5cTS3J3EBC/HHgbPF32Dn7aiu/LKWDOGjMbaDwKQiGmfqcoGQ74HUHCMw==",
            (("dist/reveal.js", "reveal.js/dist/reveal.js"), ("dist/reveal.css", "reveal.js/dist/reveal.css"),
             ("dist/theme/white.css", "reveal.js/dist/theme/white.css"),  # white: its fonts are local files
             ("dist/theme/fonts/source-sans-pro/", "reveal.js/dist/theme/fonts/source-sans-pro/"),
             ("plugin/notes/notes.js", "reveal.js/plugin/notes/notes.js"), ("LICENSE", "reveal.js/LICENSE"))),
    Package("requirejs", "2.3.7",
            "sha512-DouTG8T1WanGok6Qjg2SXuCMzszOo0eHeH9hDZ5Y4x8Je+9JB38HdTLT4/VA8OaUhBa0JPVHJ0pyBkM1z+pDsw==",
            (("require.js", "require.js"),)),
    Package("jquery", "3.7.1",
            "sha512-m4avr8yL8kmFN8psrbFFFmB/If14iN5o9nw/NgnnM+kybDJpRsAynV2BsfpTYrTRysYUdADVD7CkUUizgkpLfg==",
            (("dist/jquery.min.js", "jquery.min.js"),)),
    # MathJax 2 (nbconvert's templates call MathJax.Hub): only what TeX-AMS_CHTML-full,Safe loads.
    Package("mathjax", "2.7.9",
            "sha512-NOGEDTIM9+MrsqnjPEjVGNx4q0GQxqm61yQwSK+/5S59i26wId5IC5gNu9/bu8+CCVl5p9G2IHcAl/wJa+5+BQ==",
            (("MathJax.js", "mathjax/MathJax.js"), ("LICENSE", "mathjax/LICENSE"),
             ("config/TeX-AMS_CHTML-full.js", "mathjax/config/TeX-AMS_CHTML-full.js"),
             ("config/Safe.js", "mathjax/config/Safe.js"), ("config/local/", "mathjax/config/local/"),
             ("extensions/", "mathjax/extensions/"), ("jax/input/TeX/", "mathjax/jax/input/TeX/"),
             ("jax/output/CommonHTML/", "mathjax/jax/output/CommonHTML/"), ("jax/element/", "mathjax/jax/element/"),
             ("fonts/HTML-CSS/TeX/woff/", "mathjax/fonts/HTML-CSS/TeX/woff/"))),
    # The widget manager of ipywidgets 8 (widget state version 2) for pages without a kernel; its AMD build
    # needs require.js, and loads its icon fonts from files beside it.
    Package("@jupyter-widgets/html-manager", "1.0.15",
            "sha512-5thBIV6ymNgmPVOHvzx+gGy8ZSKmSazhtGw4/c4xJDVzRhG9PTeQsRjF3FUTopvFi//SABeNz1yp47bCrJ3CQA==",
            (("dist/embed-amd.js", "html-manager/embed-amd.js"), ("dist/", "html-manager/")),
            skip=(".map", ".js", ".txt", ".eot", ".svg", ".ttf")),  # embed-amd.js and the woff/woff2 fonts
]
class WebAssetsError(Exception):
    """The packages could not be fetched or checked (no npm, no network, a wrong checksum)."""


def cache_dir() -> Path:
    return Path(os.environ.get("SCN_WEB_CACHE") or ROOT / "build" / "web-cache")


def sha512_integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def fetch(packages: List[Package] = PACKAGES, cache: Optional[Path] = None, quiet: bool = False) -> Path:
    """Every pinned tarball in the cache, checked; `npm pack` fetches the missing ones. Returns the cache."""
    cache = Path(cache or cache_dir())
    cache.mkdir(parents=True, exist_ok=True)
    for package in packages:
        tarball = cache / package.tarball
        if not tarball.is_file():
            npm = shutil.which("npm")
            if npm is None:
                raise WebAssetsError(f"{package.spec} is not in {cache} and npm is missing: install Node.js and npm, "
                                     f"or copy a filled cache there (SCN_WEB_CACHE names it)")
            if not quiet:
                print(f"fetching {package.spec} from the npm registry (npm pack)...", flush=True)
            done = subprocess.run([npm, "pack", package.spec, "--pack-destination", str(cache), "--silent"],
                                  capture_output=True, text=True, timeout=300)
            if done.returncode != 0 or not tarball.is_file():
                raise WebAssetsError(f"npm pack {package.spec} failed (exit {done.returncode}): "
                                     f"{(done.stderr.strip().splitlines() or ['no message'])[-1]}; check the network "
                                     "or the npm registry setting (npm config get registry)")
        found = sha512_integrity(tarball)
        if found != package.integrity:
            tarball.unlink()
            raise WebAssetsError(f"{tarball}: sha512 {found[:24]}... is not the pinned {package.integrity[:24]}...; "
                                 "the file was deleted, run again to fetch it afresh")
    return cache


def members(archive: tarfile.TarFile, source: str, skip: Tuple[str, ...]) -> List[Tuple[tarfile.TarInfo, str]]:
    """(member, path below `source`) for a file or, with a trailing /, every file of a folder but `skip`'s."""
    found = []
    for member in archive.getmembers():
        if not member.isfile() or not member.name.startswith("package/"):
            continue
        inner = member.name[len("package/"):]
        if source.endswith("/"):
            if inner.startswith(source) and not inner.endswith(skip):
                found.append((member, inner[len(source):]))
        elif inner == source:
            found.append((member, ""))
    return found


def vendor(pages_dir, cache: Optional[Path] = None, quiet: bool = True) -> Path:
    """Copy the pinned files into pages_dir/vendor/ (only what changed); returns that folder."""
    cache = fetch(cache=cache, quiet=quiet)
    target = Path(pages_dir) / VENDOR
    for package in PACKAGES:
        with tarfile.open(cache / package.tarball, "r:gz") as archive:
            for source, destination in package.copy:
                found = members(archive, source, package.skip)
                if not found:
                    raise WebAssetsError(f"{package.spec} has no {source}; the pinned version and the list of files "
                                         "in tools/web_assets.py disagree")
                for member, rest in found:
                    path = target / destination / rest if source.endswith("/") else target / destination
                    if path.is_file() and path.stat().st_size == member.size:
                        continue
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with archive.extractfile(member) as data, open(path, "wb") as out:
                        shutil.copyfileobj(data, out)
    return target


def urls(prefix: str = VENDOR) -> Dict[str, str]:
    """nbconvert's settings (HTMLExporter / SlidesExporter traits) pointing at `prefix` (relative to the page)."""
    p = prefix.rstrip("/")
    return {"require_js_url": f"{p}/require.js",
            "jquery_url": f"{p}/jquery.min.js",
            "mathjax_url": f"{p}/mathjax/MathJax.js?config=TeX-AMS_CHTML-full,Safe",
            "widget_renderer_url": f"{p}/html-manager/embed-amd.js",
            "reveal_url_prefix": f"{p}/reveal.js"}


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="fill the cache (build/web-cache or $SCN_WEB_CACHE)")
    copy = sub.add_parser("vendor", help="copy the files into DIR/vendor/")
    copy.add_argument("dir")
    sub.add_parser("list", help="the pinned packages as JSON")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            print(f"web assets: {len(PACKAGES)} pinned packages in {fetch()}")
        elif args.command == "vendor":
            print(f"web assets copied into {vendor(args.dir)}")
        else:
            print(json.dumps([{"name": p.name, "version": p.version, "integrity": p.integrity} for p in PACKAGES],
                             indent=2))
    except WebAssetsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
