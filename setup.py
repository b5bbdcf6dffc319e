"""Packaging for igsync: runtime requirements come from requirements.txt (pinned)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def requirements(name: str) -> list[str]:
    lines = (HERE / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "-r"))]


setup(
    name="igsync",
    version="0.1.0",
    description="Keeps a business's Instagram Direct inbox complete and live: webhooks in, "
    "MongoDB once, WebSocket out.",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["config", "models", "server", "server.*", "handlers", "igsync_client"]),
    package_data={"handlers": ["static/*", "static/**/*"]},
    include_package_data=True,
    install_requires=requirements("requirements.txt"),
    extras_require={"embedded": requirements("requirements-embedded.txt")},
    entry_points={"console_scripts": ["igsync=server.app.cli:main"]},
    license="MIT",
)
