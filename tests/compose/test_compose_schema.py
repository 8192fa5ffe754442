"""compose/docker-compose.yml against the official Compose Specification JSON schema (vendored, unmodified)."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest

from tests.compose.stack import COMPOSE_FILE, SCHEMA_DIR, load_yaml


@pytest.fixture(scope="module")
def validator():
    schema = json.loads((SCHEMA_DIR / "compose-spec.json").read_text(encoding="utf-8"))
    # The schema declares draft-07 ("$schema": "https://json-schema.org/draft-07/schema").
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def test_vendored_schema_keeps_its_source_and_licence():
    assert "Apache License" in (SCHEMA_DIR / "LICENSE").read_text(encoding="utf-8")
    source = (SCHEMA_DIR / "SOURCE.md").read_text(encoding="utf-8")
    assert "compose-spec/compose-spec" in source and "170098ba07d9f53c383a41bfd4c5166b0a4529a6" in source


def test_compose_file_is_valid(validator):
    doc = load_yaml(COMPOSE_FILE)
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("mutate, where", [
    (lambda d: d.update(servics={}), "(root)"),
    (lambda d: d["services"]["edge"].update(port=["8080:8080"]), "services/edge"),
    (lambda d: d["services"]["tempo"].update(restart=["always"]), "services/tempo/restart"),
])
def test_the_validator_rejects_what_compose_rejects(validator, mutate, where):
    # Guards the test above: a schema that accepted anything would make it pass vacuously.
    doc = copy.deepcopy(load_yaml(COMPOSE_FILE))
    mutate(doc)
    paths = ["/".join(map(str, e.absolute_path)) or "(root)" for e in validator.iter_errors(doc)]
    assert any(p == where or p.startswith(where) for p in paths), paths
