# expect: tampering
# ruff: noqa -- written as a student would: this is the attack, not project code
# Make the tests' own tools lie: every response 200, every lookup the same, isinstance true.
import builtins
import fastapi.testclient
import json
class Everything:
    status_code = 200
    def json(self):
        return {}
fastapi.testclient.TestClient.get = lambda self, *a, **k: Everything()
json.loads = lambda *a, **k: {}
builtins.isinstance = lambda obj, cls: True
