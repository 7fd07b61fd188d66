"""Talk to a running ComfyUI over its HTTP API (no ComfyUI import): convert UI workflows, queue, collect outputs.

Used by `rain queue`. Only the standard library, so it works from any Python that has this package.
"""

from __future__ import annotations

import json
import mimetypes
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# Node types that exist only in the front end and never reach the server.
FRONTEND_ONLY_TYPES = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
# Widget types ComfyUI draws in the node (everything else is a socket only).
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# Node modes: 0 always, 2 muted ("never"), 4 bypassed.
MUTED_MODES = {2, 4}


class WorkflowError(ValueError):
    """A workflow file that cannot be converted or run; the message names the node and field."""


class ServerError(RuntimeError):
    """The ComfyUI server could not be reached or refused a request."""


def _is_widget(spec) -> bool:
    if not isinstance(spec, (list, tuple)) or not spec:
        return False
    kind = spec[0]
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if options.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _has_control_widget(name: str, spec) -> bool:
    """INT seeds get a front-end-only 'control_after_generate' value right after theirs in widgets_values."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if "control_after_generate" in options:
        return bool(options["control_after_generate"])
    return spec[0] == "INT" and name in ("seed", "noise_seed")


def is_api_format(workflow) -> bool:
    return isinstance(workflow, dict) and "nodes" not in workflow and all(
        isinstance(v, dict) and "class_type" in v for v in workflow.values()
    )


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a UI-format (0.4) workflow into the API prompt `/prompt` takes, using the server's /object_info."""
    if is_api_format(workflow):
        return json.loads(json.dumps(workflow))
    if not isinstance(workflow, dict) or "nodes" not in workflow or "links" not in workflow:
        raise WorkflowError("workflow: expected a ComfyUI UI workflow (keys 'nodes' and 'links') or an API prompt "
                            "(node id -> {'class_type', 'inputs'}); found neither. Save it from ComfyUI with "
                            "Workflow → Save, or Export (API).")
    nodes = {str(n["id"]): n for n in workflow["nodes"]}
    # link id -> (origin node id, origin slot)
    links = {}
    for link in workflow["links"]:
        if isinstance(link, dict):
            links[link["id"]] = (str(link["origin_id"]), link["origin_slot"])
        else:
            links[link[0]] = (str(link[1]), link[2])

    def resolve(node_id: str, slot: int, seen=()):
        """Follow links through Reroute nodes to the real producer."""
        node = nodes.get(node_id)
        if node is not None and node.get("type") == "Reroute":
            if node_id in seen:
                raise WorkflowError(f"node {node_id} (Reroute): links form a cycle")
            link_id = (node.get("inputs") or [{}])[0].get("link")
            if link_id is None:
                return None
            return resolve(*links[link_id], seen=(*seen, node_id))
        if node is not None and node.get("mode") in MUTED_MODES:
            return None
        return [node_id, slot]

    prompt = {}
    for node_id, node in nodes.items():
        class_type = node.get("type")
        if class_type in FRONTEND_ONLY_TYPES or node.get("mode") in MUTED_MODES:
            continue
        info = object_info.get(class_type)
        if info is None:
            raise WorkflowError(f"node {node_id} ({class_type}): this node type is not installed on the server. "
                                "Install the pack that provides it (see the workflow's Note node).")
        spec_inputs = {}
        for section in ("required", "optional"):
            spec_inputs.update((info.get("input") or {}).get(section) or {})
        order = []
        for section in ("required", "optional"):
            order += list((info.get("input_order") or {}).get(section) or (info.get("input") or {}).get(section) or {})
        linked = {}
        for socket in node.get("inputs") or []:
            if socket.get("link") is not None:
                source = resolve(*links[socket["link"]])
                if source is not None:
                    linked[socket["name"]] = source
        values = node.get("widgets_values") or []
        inputs = {}
        if isinstance(values, dict):  # some packs (VideoHelperSuite) save widgets by name
            inputs.update({k: v for k, v in values.items() if k in spec_inputs})
        else:
            position = 0
            for name in order:
                spec = spec_inputs[name]
                if not _is_widget(spec):
                    continue
                if position < len(values):
                    inputs[name] = values[position]
                position += 1
                if _has_control_widget(name, spec):
                    position += 1
        inputs.update(linked)
        prompt[node_id] = {"class_type": class_type, "inputs": inputs, "_meta": {"title": node.get("title", class_type)}}
    return prompt


def apply_overrides(prompt: dict, overrides: dict[str, object]) -> dict:
    """Set `NODE.INPUT=VALUE` overrides. NODE is a node id, a title or a class type (all matches)."""
    prompt = json.loads(json.dumps(prompt))
    for key, value in overrides.items():
        if "." not in key:
            raise WorkflowError(f"--set {key}: expected NODE.INPUT=VALUE, e.g. 12.seed=7 or 'RAIN Sampler.seed=7'")
        node_key, input_name = key.rsplit(".", 1)
        targets = [nid for nid, n in prompt.items()
                   if nid == node_key or n["class_type"] == node_key or n.get("_meta", {}).get("title") == node_key]
        if not targets:
            known = ", ".join(f"{nid} ({n['class_type']})" for nid, n in prompt.items())
            raise WorkflowError(f"--set {key}: no node '{node_key}' in the workflow; nodes are: {known}")
        for nid in targets:
            prompt[nid]["inputs"][input_name] = value
    return prompt


def parse_value(text: str):
    """Command-line values: JSON when it parses (numbers, true/false, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@dataclass
class JobResult:
    name: str
    status: str
    prompt_id: str | None = None
    files: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    server: str | None = None


class ComfyClient:
    def __init__(self, server: str, timeout: float = 30.0):
        self.base = server.rstrip("/")
        if not self.base.startswith(("http://", "https://")):
            self.base = "http://" + self.base
        self.timeout = timeout
        self.client_id = uuid.uuid4().hex

    def _request(self, path: str, data: bytes | None = None, headers: dict | None = None) -> bytes:
        request = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            body = error.read().decode("utf-8", "replace")[:2000]
            raise ServerError(f"{self.base}{path}: HTTP {error.code}: {body}") from None
        except (urllib.error.URLError, OSError) as error:
            raise ServerError(f"cannot reach ComfyUI at {self.base} ({error}). Is it running? "
                                    "Start it with `python main.py --listen 127.0.0.1 --port 8188`.") from None

    def get_json(self, path: str):
        return json.loads(self._request(path))

    def post_json(self, path: str, payload) -> dict:
        return json.loads(self._request(path, json.dumps(payload).encode(), {"Content-Type": "application/json"}))

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def upload_image(self, path: Path) -> str:
        """Upload a file to the server's input folder; returns the name to use in a LoadImage-style input."""
        boundary = uuid.uuid4().hex
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{path.name}\"\r\n"
                f"Content-Type: {mime}\r\n\r\n").encode() + path.read_bytes() + \
               (f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"overwrite\"\r\n\r\ntrue\r\n"
                f"--{boundary}--\r\n").encode()
        answer = json.loads(self._request("/upload/image", body,
                                          {"Content-Type": f"multipart/form-data; boundary={boundary}"}))
        return answer["name"] if not answer.get("subfolder") else f"{answer['subfolder']}/{answer['name']}"

    def queue(self, prompt: dict) -> str:
        answer = self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if answer.get("node_errors"):
            raise WorkflowError(f"the server rejected the prompt: {json.dumps(answer['node_errors'])[:2000]}")
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 3600.0, poll: float = 0.25) -> dict:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            history = self.get_json(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                return entry
            time.sleep(poll)
        raise ServerError(f"prompt {prompt_id}: no result after {timeout:.0f} s")

    def download_outputs(self, entry: dict, folder: Path, prefix: str = "") -> list[str]:
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for node_output in entry.get("outputs", {}).values():
            for kind in ("images", "gifs", "videos", "animated"):
                for item in node_output.get(kind, []) or []:
                    if not isinstance(item, dict) or "filename" not in item:
                        continue
                    query = urllib.parse.urlencode({"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                                                    "type": item.get("type", "output")})
                    data = self._request(f"/view?{query}")
                    target = folder / f"{prefix}{item['filename']}"
                    temporary = target.with_name(target.name + ".part")
                    temporary.write_bytes(data)
                    temporary.replace(target)
                    written.append(str(target))
        return written


def error_messages(entry: dict) -> str:
    for kind, message in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return f"{message.get('node_type')} (node {message.get('node_id')}): {message.get('exception_message', '').strip()}"
    return "execution failed (no message from the server)"
