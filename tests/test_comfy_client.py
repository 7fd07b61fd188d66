"""UI-format → API-format conversion used by `rain queue` (object_info shaped exactly like ComfyUI's)."""

import pytest

from rain_core.cli.comfy_client import WorkflowError, apply_overrides, parse_value, ui_to_api

OBJECT_INFO = {
    "LoadImage": {
        "input": {"required": {"image": [["a.png", "b.png"], {"image_upload": True}]}},
        "input_order": {"required": ["image"]},
        "output": ["IMAGE", "MASK"],
    },
    "KSamplerLike": {
        "input": {"required": {
            "model": ["MODEL"],
            "seed": ["INT", {"default": 0, "min": 0, "max": 2**64 - 1, "control_after_generate": True}],
            "steps": ["INT", {"default": 20}],
            "cfg": ["FLOAT", {"default": 8.0}],
            "sampler_name": [["euler", "dpm"]],
        }, "optional": {"latent": ["LATENT"], "note": ["STRING", {"default": ""}]}},
        "input_order": {"required": ["model", "seed", "steps", "cfg", "sampler_name"], "optional": ["latent", "note"]},
        "output": ["LATENT"],
    },
    "SaveImage": {
        "input": {"required": {"images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}},
        "input_order": {"required": ["images", "filename_prefix"]},
        "output": [],
    },
}


def ui_workflow():
    return {
        "version": 0.4,
        "nodes": [
            {"id": 1, "type": "LoadImage", "mode": 0, "inputs": [], "widgets_values": ["b.png", "image"]},
            {"id": 2, "type": "KSamplerLike", "mode": 0, "title": "Sampler",
             "inputs": [{"name": "model", "type": "MODEL", "link": 10},
                        {"name": "steps", "type": "INT", "link": 11, "widget": {"name": "steps"}}],
             "widgets_values": [42, "fixed", 7, 3.5, "dpm", "hello"]},
            {"id": 3, "type": "Reroute", "mode": 0, "inputs": [{"name": "", "type": "*", "link": 12}]},
            {"id": 4, "type": "SaveImage", "mode": 0, "inputs": [{"name": "images", "type": "IMAGE", "link": 13}],
             "widgets_values": ["rain"]},
            {"id": 5, "type": "Note", "mode": 0, "widgets_values": ["needs pack X"]},
            {"id": 6, "type": "SaveImage", "mode": 2, "inputs": [], "widgets_values": ["muted"]},
            {"id": 7, "type": "ModelSource", "mode": 0},
        ],
        "links": [[10, 7, 0, 2, 0, "MODEL"], [11, 7, 1, 2, 1, "INT"], [12, 1, 0, 3, 0, "IMAGE"],
                  [13, 3, 0, 4, 0, "IMAGE"]],
    }


def object_info_with_source():
    info = dict(OBJECT_INFO)
    info["ModelSource"] = {"input": {"required": {}}, "input_order": {"required": []}, "output": ["MODEL", "INT"]}
    return info


def test_widget_values_map_positionally_and_skip_seed_control_value():
    api = ui_to_api(ui_workflow(), object_info_with_source())
    sampler = api["2"]["inputs"]
    assert sampler["seed"] == 42
    assert sampler["cfg"] == 3.5 and sampler["sampler_name"] == "dpm" and sampler["note"] == "hello"
    assert sampler["model"] == ["7", 0]
    assert sampler["steps"] == ["7", 1], "a widget converted to a linked input takes the link, not the value"


def test_reroutes_are_followed_and_notes_and_muted_nodes_dropped():
    api = ui_to_api(ui_workflow(), object_info_with_source())
    assert api["4"]["inputs"]["images"] == ["1", 0]
    assert "3" not in api and "5" not in api and "6" not in api
    assert api["1"]["inputs"] == {"image": "b.png"}


def test_unknown_node_type_names_the_node_and_says_what_to_install():
    with pytest.raises(WorkflowError, match=r"node 7 \(ModelSource\).*not installed"):
        ui_to_api(ui_workflow(), OBJECT_INFO)


def test_api_format_passes_through_unchanged():
    api = {"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}}}
    assert ui_to_api(api, OBJECT_INFO) == api


def test_overrides_by_id_title_or_class_and_helpful_error():
    api = ui_to_api(ui_workflow(), object_info_with_source())
    assert apply_overrides(api, {"2.seed": 7})["2"]["inputs"]["seed"] == 7
    assert apply_overrides(api, {"Sampler.cfg": 1.5})["2"]["inputs"]["cfg"] == 1.5
    assert apply_overrides(api, {"SaveImage.filename_prefix": "x"})["4"]["inputs"]["filename_prefix"] == "x"
    with pytest.raises(WorkflowError, match="no node 'Nope'"):
        apply_overrides(api, {"Nope.seed": 1})
    assert api["2"]["inputs"]["seed"] == 42, "overrides must not mutate the converted prompt"


def test_parse_value_reads_json_scalars_and_keeps_plain_strings():
    assert parse_value("7") == 7 and parse_value("true") is True and parse_value("2.5") == 2.5
    assert parse_value("refs/a.png") == "refs/a.png"
