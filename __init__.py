"""ComfyUI entry point of the RAIN node pack.

ComfyUI imports this folder as a package named after the folder (registry installs rename it), so
everything inside the pack is imported relatively. The engine (`rain_core`) never imports ComfyUI.
"""

if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS, host, live_route  # live_route: /rain/live
    from .rain_core.cpu_fast import allow_background_compile

    host.warn_about_opencv()  # two OpenCV builds in one cv2 folder: say which and what to keep
    del host, live_route  # imported for its effect: the live panel's route, registered only under ComfyUI's server
    # The ComfyUI server is a long-lived host: the nodes and the live panel may build the compiled CPU tick in a
    # background child while streams run eagerly; the child ends with the server (rain_core.cpu_fast).
    allow_background_compile()
else:
    # Imported as a plain file, not as a package: pytest does this to the repository root while collecting
    # tests (the clone folder's name need not be a valid package name). There is nothing to register then.
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = "./js"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
