"""Who may exchange, and what they get: an ordered list of rules, first match wins.

    # policy.yaml
    rules:
      - name: no-system                # refusals name the rule that refused
        namespaces: ["kube-*"]
        allow: false
      - name: flyte-projects
        namespaces: ["*-development", "*-production"]   # globs (fnmatch, case-sensitive)
        service_accounts: ["default", "flyte-*"]        # default ["*"]
        identity: executor             # executor | service-account (default: --identity)
        no_principal: refuse           # refuse | service-account: when the execution has none
        non_flyte_pods: refuse         # refuse | service-account: pods that claim no
                                       # execution (no Flyte label, no Flyte owner)
        max_lifetime: 3600             # seconds; caps --token-lifetime
        scopes: ["all"]                # scopes minted tokens may carry (default ["all"])

A namespace and service account that no rule matches are refused.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flyte_auth_common.errors import ConfigError
from flyte_auth_exchange.config import IDENTITY_SERVICE_ACCOUNT, Identity

REFUSE = "refuse"
_BOOLEAN_KEYS = (" (YAML reads an unquoted no, yes, on, off, true or false as a boolean: quote "
                 "it, or mean no_principal or non_flyte_pods)")
_IDENTITIES = ("executor", "service-account")
_FIELDS = {"name", "namespaces", "service_accounts", "allow", "identity", "no_principal",
           "non_flyte_pods", "max_lifetime", "scopes"}


@dataclass(frozen=True)
class Rule:
    name: str
    namespaces: tuple[str, ...] = ("*",)
    service_accounts: tuple[str, ...] = ("*",)
    allow: bool = True
    identity: Identity = "executor"
    no_principal: str = REFUSE  # or "service-account"
    non_flyte_pods: str = REFUSE  # or "service-account"
    max_lifetime: float | None = None
    scopes: tuple[str, ...] = ("all",)

    def matches(self, namespace: str, service_account: str) -> bool:
        return any(fnmatch.fnmatchcase(namespace, p) for p in self.namespaces) and any(
            fnmatch.fnmatchcase(service_account, p) for p in self.service_accounts)


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]

    def rule_for(self, namespace: str, service_account: str) -> Rule | None:
        for rule in self.rules:
            if rule.matches(namespace, service_account):
                return rule
        return None

    @property
    def uses_executor(self) -> bool:
        return any(r.allow and r.identity == "executor" for r in self.rules)

    @classmethod
    def default(cls, identity: Identity) -> Policy:
        return cls((Rule("default", identity=identity),))

    @classmethod
    def load(cls, path: Path, default_identity: Identity) -> Policy:
        where = f"--policy {path}"
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError([f"{where}: cannot be read ({exc.strerror})"]) from None
        except UnicodeDecodeError as exc:
            raise ConfigError([f"{where}: not UTF-8 text (byte {exc.start})"]) from None
        except RecursionError:
            raise ConfigError([f"{where}: nested too deep to be a policy"]) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError([f"{where}: not valid YAML{line}"]) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("rules"), list) or not doc["rules"]:
            raise ConfigError([f"{where}: expected a mapping with a non-empty list `rules`"])
        problems: list[str] = []
        rules = [_rule(raw, i, default_identity, problems, where) for i, raw in
                 enumerate(doc["rules"])]
        if problems:
            raise ConfigError(problems)
        return cls(tuple(r for r in rules if r is not None))


def _strings(value: Any, field: str, label: str, problems: list[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        problems.append(f"{label}: `{field}` must be a non-empty list of strings")
        return ()
    return tuple(value)


def _rule(raw: Any, index: int, default_identity: Identity, problems: list[str],
          where: str) -> Rule | None:
    label = f"{where}: rule {index + 1}"
    if not isinstance(raw, dict):
        problems.append(f"{label}: must be a mapping")
        return None
    name = raw.get("name", f"rule-{index + 1}")
    if not isinstance(name, str | int):
        problems.append(f"{label}: `name` must be a string")
        name = f"rule-{index + 1}"
    label = f"{where}: rule {name!r}"
    unknown = sorted(repr(k) if not isinstance(k, str) else k for k in raw if k not in _FIELDS)
    if unknown:
        problems.append(f"{label}: unknown field(s) {', '.join(unknown)}; known: "
                        f"{', '.join(sorted(_FIELDS))}" + _BOOLEAN_KEYS * any(
                            isinstance(k, bool) for k in raw))
    identity = raw.get("identity", default_identity)
    if identity not in _IDENTITIES:
        problems.append(f"{label}: identity must be executor or service-account")
    fallbacks = {}
    for field in ("no_principal", "non_flyte_pods"):
        fallbacks[field] = raw.get(field, REFUSE)
        if fallbacks[field] not in (REFUSE, IDENTITY_SERVICE_ACCOUNT):
            problems.append(f"{label}: {field} must be refuse or service-account")
    max_lifetime = raw.get("max_lifetime")
    if max_lifetime is not None and (isinstance(max_lifetime, bool) or
                                     not isinstance(max_lifetime, int | float) or
                                     max_lifetime <= 0):
        problems.append(f"{label}: max_lifetime must be a positive number of seconds")
    allow = raw.get("allow", True)
    if not isinstance(allow, bool):
        problems.append(f"{label}: allow must be true or false")
    return Rule(
        name=str(name),
        namespaces=_strings(raw.get("namespaces", ["*"]), "namespaces", label, problems),
        service_accounts=_strings(raw.get("service_accounts", ["*"]), "service_accounts", label,
                                  problems),
        allow=bool(allow),
        identity=identity,
        no_principal=str(fallbacks["no_principal"]),
        non_flyte_pods=str(fallbacks["non_flyte_pods"]),
        max_lifetime=float(max_lifetime) if isinstance(max_lifetime, int | float) else None,
        scopes=_strings(raw.get("scopes", ["all"]), "scopes", label, problems),
    )
