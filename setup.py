"""Which packages the distribution ships; everything else is declared in pyproject.toml.

setuptools finds every package below auditor/ (a new subpackage ships without touching any list), and the rule
catalog in rules/ installs as `auditor_rules`, so it cannot shadow a user's own `rules` package. pyproject.toml
alone cannot rename what `packages.find` discovers, hence this file. tests/test_packaging.py builds the wheel and
checks it against the folders on disk.
"""

from setuptools import find_packages, setup

RULES_DIR, RULES_PACKAGE = "rules", "auditor_rules"

setup(
    packages=find_packages(include=["auditor", "auditor.*"])
    + [RULES_PACKAGE + name[len(RULES_DIR) :] for name in find_packages(include=[RULES_DIR, RULES_DIR + ".*"])],
    package_dir={RULES_PACKAGE: RULES_DIR},
)
