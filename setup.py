"""Maps the fixed top-level folders onto the ``nicwarden.*`` import namespace.

pyproject.toml cannot compute the package list, and listing every subpackage by
hand drifts as rooms are added, so it is derived here.
"""

from setuptools import find_packages, setup

ROOTS = ("agent", "deviceplugin", "cni", "bpf", "proto")

packages: list[str] = []
package_dir: dict[str, str] = {}
for root in ROOTS:
    packages.append(f"nicwarden.{root}")
    package_dir[f"nicwarden.{root}"] = root
    packages.extend(f"nicwarden.{root}.{sub}" for sub in find_packages(root))

setup(packages=packages, package_dir=package_dir)
