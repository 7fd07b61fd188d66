"""The example workflows in example_workflows/: UI format 0.4, a thumbnail each, known nodes, typed links, valid widgets.

Our nodes are checked against their INPUT_TYPES; ComfyUI core and third-party nodes against the widget
lists pinned below (ComfyUI 0.3.64, comfyui_controlnet_aux). The real-host tier (test_comfyui_host.py)
checks the same files against a running ComfyUI's /object_info.
"""

import json
from pathlib import Path

import pytest
from test_nodes import load_pack

from rain_core.cli.comfy_client import ui_to_api

WORKFLOWS = sorted((Path(__file__).resolve().parents[1] / "example_workflows").glob("*.json"))
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute"}
# Widget inputs, in order, of the non-RAIN nodes the workflows use: (name, spec) as /object_info gives them.
PINNED = {
    "LoadImage": {"input": {"required": {"image": [["anyone-1.png", "anyone-2.png", "anime-portrait.png"],
                                                   {"image_upload": True}]}},
                  "output": ["IMAGE", "MASK"]},
    "LoadVideo": {"input": {"required": {"file": [["anyone-video-1_kps.mp4"], {}]}}, "output": ["VIDEO"]},
    "CreateVideo": {"input": {"required": {"images": ["IMAGE", {}], "fps": ["FLOAT", {"min": 1.0, "max": 120.0}]},
                              "optional": {"audio": ["AUDIO", {}]}}, "output": ["VIDEO"]},
    "SaveVideo": {"input": {"required": {"video": ["VIDEO", {}], "filename_prefix": ["STRING", {}],
                                         "format": [["auto", "mp4"], {}], "codec": [["auto", "h264"], {}]}},
                  "output": []},
    "PreviewImage": {"input": {"required": {"images": ["IMAGE", {}]}}, "output": []},
    "SaveImage": {"input": {"required": {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {}]}},
                  "output": []},
}
# Combos that list the files of ComfyUI's input folder: a shipped workflow may only name the example inputs the
# pack ships (and copies there), so it runs as it is right after install.
FILE_COMBOS = {("LoadImage", "image"), ("LoadVideo", "file"), ("RainPoseStream", "video_path"),
               ("RainLoadPoseKeypoints", "file")}
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SHIPPED_INPUTS = {p.name for p in EXAMPLES.iterdir()} | {p.name for p in (EXAMPLES / "keypoints").iterdir()}


def object_info():
    """/object_info-shaped specs for our nodes (from the classes) and the pinned others."""
    info = {name: dict(spec) for name, spec in PINNED.items()}
    for name, node in load_pack().NODE_CLASS_MAPPINGS.items():
        spec = node.INPUT_TYPES()
        info[name] = {"input": {k: {n: list(v) for n, v in spec.get(k, {}).items()} for k in ("required", "optional")},
                      "output": list(node.RETURN_TYPES)}
    return info


def widget_inputs(spec):
    """(name, spec) of the inputs drawn as widgets, in the order the front end saves their values."""
    for section in ("required", "optional"):
        for name, value in spec["input"].get(section, {}).items():
            kind, options = value[0], value[1] if len(value) > 1 else {}
            if options.get("forceInput"):
                continue  # a socket only, never a widget
            if isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN"):
                yield name, kind, options


def load(path):
    return json.loads(path.read_text())


def test_the_five_workflows_are_there_numbered_1_to_5():
    assert [path.stem.split(" - ")[0] for path in WORKFLOWS] == [f"RAIN {n}" for n in range(1, 6)]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_workflow_is_ui_format_0_4_with_a_jpeg_thumbnail(path):
    workflow = load(path)
    assert workflow["version"] == 0.4 and workflow["nodes"] and "links" in workflow
    thumbnail = path.with_suffix(".jpg")
    assert thumbnail.read_bytes()[:3] == b"\xff\xd8\xff"


def test_titles_are_readable():
    # Browse Templates (frontend 1.27) shows a custom node template under its file name.
    for path in WORKFLOWS:
        assert path.stem.startswith("RAIN ") and " - " in path.stem and "_" not in path.stem


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_node_is_ours_core_or_a_pack_named_in_a_note(path):
    workflow, info = load(path), object_info()
    notes = " ".join(str(v) for n in workflow["nodes"] if n["type"] in FRONTEND_ONLY for v in n["widgets_values"])
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        assert node["type"] in info, f"{path.name}: unknown node {node['type']}"
        pack = info[node["type"]].get("pack")
        if pack:
            assert pack in notes, f"{path.name}: {node['type']} needs {pack}, which no Note names"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_links_connect_matching_types(path):
    workflow, info = load(path), object_info()
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for link_id, source, slot, target, socket, kind in workflow["links"]:
        out = nodes[source]["outputs"][slot]
        inp = nodes[target]["inputs"][socket]
        assert out["type"] == inp["type"] == kind, f"link {link_id}"
        assert link_id in out["links"] and inp["link"] == link_id
        assert info[nodes[source]["type"]]["output"][slot] == kind
        spec = info[nodes[target]["type"]]["input"]
        declared = {**spec.get("required", {}), **spec.get("optional", {})}[inp["name"]]
        assert declared[0] == kind, f"link {link_id}: {inp['name']} takes {declared[0]}, gets {kind}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_widget_values_are_valid_for_their_inputs(path):
    workflow, info = load(path), object_info()
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        widgets = list(widget_inputs(info[node["type"]]))
        values = node["widgets_values"]
        extra = 1 if node["type"] in ("LoadImage", "LoadVideo") else 0  # the upload button's value
        assert len(values) == len(widgets) + extra, f"{path.name} node {node['id']} ({node['type']})"
        for (name, kind, options), value in zip(widgets, values):
            where = f"{path.name} node {node['id']} ({node['type']}).{name} = {value!r}"
            if (node["type"], name) in FILE_COMBOS:
                assert value in SHIPPED_INPUTS | {"none"}, where
            elif isinstance(kind, list):
                assert value in kind, where
            elif kind == "INT":
                assert isinstance(value, int) and not isinstance(value, bool), where
                assert options.get("min", value) <= value <= options.get("max", value), where
            elif kind == "FLOAT":
                assert isinstance(value, (int, float)) and not isinstance(value, bool), where
                assert options.get("min", value) <= value <= options.get("max", value), where
            elif kind == "BOOLEAN":
                assert isinstance(value, bool), where
            else:
                assert isinstance(value, str), where


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_api_conversion_gives_every_required_input_of_our_nodes(path):
    info = object_info()
    prompt = ui_to_api(load(path), info)
    for node_id, node in prompt.items():
        if node["class_type"] not in load_pack().NODE_CLASS_MAPPINGS:
            continue
        required = info[node["class_type"]]["input"]["required"]
        missing = set(required) - set(node["inputs"])
        assert not missing, f"{path.name} node {node_id}: {missing}"


def test_no_other_folder_comfyui_scans_for_templates_holds_json():
    # ComfyUI lists *.json in example_workflows/, example/, examples/, workflow/ and workflows/ as templates, but
    # serves them from the first of these folders only: a .json elsewhere would be listed and then fail to load.
    root = Path(__file__).resolve().parents[1]
    for folder in ("example", "examples", "workflow", "workflows"):
        assert not list((root / folder).glob("*.json")), folder
