"""Web app: pick a recipe, point it at local checkpoints, watch the run live, get the orbit video and the textured GLB.

    python gradio_app.py [--port 7860] [--outputs outputs]       # then open http://127.0.0.1:7860

Runs are `launch.py` subprocesses in ordinary trial folders (`<outputs>/<name>/<tag>@<time>-job<N>/`), one at a time;
they resume from the command line like any other run. Binds to 127.0.0.1; makes no network calls (Gradio analytics
off, system fonts only).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gradio as gr  # noqa: E402

from threestudio.utils.presets import PRESET_NAMES  # noqa: E402
from threestudio.webapp.jobs import JobQueue, progress_markdown  # noqa: E402
from threestudio.webapp.recipes import JobInputs, RecipeInputError, available_recipes, find_recipe  # noqa: E402


def build_app(queue: JobQueue) -> gr.Blocks:
    recipes = available_recipes()
    names = [r.name for r in recipes]
    with gr.Blocks(title="threestudio", analytics_enabled=False) as app:
        gr.Markdown("## threestudio · text / image / views → 3D")
        job_id = gr.State(None)
        shown = gr.State({})
        with gr.Row():
            with gr.Column(scale=1):
                recipe = gr.Dropdown(names, value=names[0], label="Recipe", elem_id="recipe")
                about = gr.Markdown(recipes[0].description)
                views = gr.File(label="Views: RGBA PNGs + transforms.json, an orbit video, or a zip",
                                file_count="multiple", elem_id="views")
                prompt = gr.Textbox(label="Prompt", visible=False, elem_id="prompt")
                image = gr.Image(label="Input image (RGBA)", type="filepath", image_mode="RGBA", visible=False)
                checkpoint = gr.Textbox(label="Checkpoint (local path)", visible=False, elem_id="checkpoint")
                checkpoint2 = gr.Textbox(label="Second checkpoint (local path)", visible=False)
                preset = gr.Dropdown([None, *PRESET_NAMES], value=None, label="Memory preset", visible=False)
                steps = gr.Number(label="Training steps (empty: the recipe's)", value=None, precision=0,
                                  elem_id="steps")
                seed = gr.Number(label="Seed", value=0, precision=0)
                extra = gr.Textbox(label="Advanced: key=value overrides, one per line", lines=4, elem_id="extra")
                with gr.Row():
                    start = gr.Button("Start", variant="primary", elem_id="start")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                notice = gr.Markdown("", elem_id="notice")
            with gr.Column(scale=2):
                status = gr.Markdown(progress_markdown(None, None), elem_id="status")
                latest = gr.Image(label="Latest validation image", interactive=False, elem_id="latest", height=200)
                video = gr.Video(label="Orbit video", interactive=False, elem_id="video")
                model = gr.Model3D(label="Textured mesh (GLB)", elem_id="model3d", height=360)
                downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")
                table = gr.Dataframe(headers=["job", "recipe", "status", "step", "trial folder"], interactive=False,
                                     label="Queue (one job runs at a time)", elem_id="queue")

        def on_recipe(name):
            r = find_recipe(name)
            return (r.description, gr.update(visible="views" in r.needs), gr.update(visible="prompt" in r.needs),
                    gr.update(visible="image" in r.needs), gr.update(visible="checkpoint" in r.needs),
                    gr.update(visible="checkpoint2" in r.needs), gr.update(visible=r.presets))

        recipe.change(on_recipe, recipe, [about, views, prompt, image, checkpoint, checkpoint2, preset])

        def on_start(name, files, prompt_text, image_path, ckpt, ckpt2, preset_name, n_steps, seed_value, extra_text):
            try:
                job = queue.submit(find_recipe(name), JobInputs(
                    files=[getattr(f, "name", f) for f in files or []], prompt=prompt_text or "", image=image_path,
                    checkpoint=ckpt or "", checkpoint2=ckpt2 or "", preset=preset_name,
                    max_steps=int(n_steps) if n_steps else None,
                    seed=int(seed_value) if seed_value is not None else None,
                    extra=(extra_text or "").splitlines()))
            except (RecipeInputError, ValueError) as e:
                return gr.update(), f"**Cannot start:** {e}", {}
            return job.id, f"Queued job {job.id}: `{job.trial_dir}`", {}

        start.click(on_start, [recipe, views, prompt, image, checkpoint, checkpoint2, preset, steps, seed, extra],
                    [job_id, notice, shown])

        def on_stop(current):
            return queue.stop(current) if current is not None else "No job to stop."

        stop.click(on_stop, job_id, notice)

        def refresh(current, seen):
            job = queue.get(current)
            progress = job.progress() if job else None
            outputs = {k: (progress or {}).get(k) for k in ("latest_image", "video", "mesh")}
            finished = job is not None and job.status in ("done", "stopped", "out_of_memory", "failed")
            updates = []
            for key in ("latest_image", "video", "mesh"):
                path = outputs[key]
                ready = path and os.path.isfile(path) and (key == "latest_image" or finished)
                if ready and seen.get(key) != path:  # only send a file once: no reloading every tick
                    updates.append(path)
                    seen = {**seen, key: path}
                else:
                    updates.append(gr.update())
            files = gr.update()
            if finished and seen.get("downloads") != job.trial_dir:
                found = [p for p in (outputs["video"], outputs["mesh"]) if p and os.path.isfile(p)]
                if outputs["mesh"]:
                    folder = os.path.dirname(outputs["mesh"])
                    found += [os.path.join(folder, f) for f in ("model.obj", "model.mtl", "texture_kd.png")
                              if os.path.isfile(os.path.join(folder, f))]
                ckpt = os.path.join(job.trial_dir, "ckpts", "last.ckpt")
                if os.path.isfile(ckpt):
                    found.append(ckpt)
                files = found or gr.update()
                seen = {**seen, "downloads": job.trial_dir}
            return [progress_markdown(job, progress), *updates, files, queue.table(), seen]

        timer = gr.Timer(1.0)
        timer.tick(refresh, [job_id, shown], [status, latest, video, model, downloads, table, shown])
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--outputs", default="outputs", help="experiment root of the app's runs (exp_root_dir)")
    args = parser.parse_args(argv)
    queue = JobQueue(args.outputs)
    app = build_app(queue)
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # system fonts: no font download
    app.launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False, ssr_mode=False,
               allowed_paths=[os.path.abspath(args.outputs)], theme=theme, footer_links=[], prevent_thread_lock=True)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    # also when started in the background of a non-interactive shell, which ignores SIGINT
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while True:  # our own wait: Ctrl-C / SIGTERM stop the app (and ask a running job to save and stop)
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("Stopping: a running job saves its checkpoint first.", flush=True)
    finally:
        queue.close()
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
