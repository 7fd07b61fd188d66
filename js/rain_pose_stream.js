// Pose Stream's video_path is a combo with an upload button (video_upload). The front end previews the combo's value
// as a file of the input folder, also when the value names no file: "none" (use the connected input) or
// "webcam" / "webcam:N" (a camera). That preview asked for /api/view?filename=none and got a 404 on every load of
// a workflow with Pose Stream. The front end skips a preview while the node says it is loading (`node.isLoading`),
// in the first frame after the node is made and on every change of the combo (front ends 1.27 and 1.58 alike), so
// the node reports "loading" whenever its value names no file. Imports are relative because registry installs
// rename the pack folder (served under /extensions/<folder>/).
import { app } from "../../scripts/app.js";

const NODE_TYPE = "RainPoseStream";
const WIDGET = "video_path";

export const namesNoFile = (value) => {
  const text = String(value ?? "").trim().toLowerCase();
  return text === "" || text === "none" || text === "webcam" || text.startsWith("webcam:");
};

function skipPreviewWithoutFile(node) {
  const widget = node.widgets?.find((w) => w.name === WIDGET);
  if (!widget) return;
  let loading = node.isLoading ?? false;
  Object.defineProperty(node, "isLoading", {
    configurable: true,
    get: () => loading || namesNoFile(widget.value),
    set: (value) => { loading = value; },
  });
}

app.registerExtension({
  name: "rain.pose_stream_preview",
  nodeCreated(node) {
    if ((node.comfyClass ?? node.constructor?.comfyClass) === NODE_TYPE) skipPreviewWithoutFile(node);
  },
});
