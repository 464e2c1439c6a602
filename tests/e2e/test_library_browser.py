"""The library's main flow in a real browser: upload a folder, find it by search, open its
page and a preview, make a second version, restore the first, download it."""

from __future__ import annotations

import json
import re
import tarfile

from playwright.sync_api import expect

TIMEOUT_MS = 45_000


def _upload(page, server, folder, name):
    page.goto(server.base + "/library/upload/")
    page.fill("#id_name", name)
    page.select_option("#id_kind", "dataset")
    page.set_input_files("#pick-folder", str(folder))
    expect(page.locator("#upload-picked")).to_contain_text("file(s)")
    page.click("#upload-start")
    # The import runs as a job; its page shows it finish.
    expect(page).to_have_url(re.compile(r"/jobs/\d+/$"), timeout=TIMEOUT_MS)
    expect(page.locator("#job-live")).to_have_attribute("data-status", "succeeded",
                                                        timeout=TIMEOUT_MS)


def test_upload_search_preview_version_restore_download(server, browser, tmp_path):
    folder = tmp_path / "recipes-set"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.jsonl").write_text(
        "\n".join(json.dumps({"instruction": f"make soup {i}", "output": "stir"}) for i in range(12)))
    (folder / "README.md").write_text("# Soup recipes\nA tiny instruction set.\n")
    big = bytes(range(256)) * (9 * 1024 * 1024 // 256 + 7)  # more than two 4 MB chunks
    (folder / "data" / "blob.bin").write_bytes(big)

    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.goto(server.login_link)
    _upload(page, server, folder, "soup-set")

    # Found by search as you type.
    page.goto(server.base + "/library/")
    page.fill("#library-q", "soup kind:dataset")
    expect(page.locator("#library-results")).to_contain_text("soup-set", timeout=TIMEOUT_MS)
    expect(page.locator("#result-count")).to_have_text("1 asset")
    page.fill("#library-q", "kind:model")
    expect(page.locator("#result-count")).to_have_text("0 assets")
    page.fill("#library-q", "soup")
    page.click("#library-results >> text=soup-set")

    # Its page: files, and a preview of the dataset rows without downloading.
    expect(page.locator("h1")).to_contain_text("version 1 of 1")
    expect(page.locator("table.files")).to_contain_text("data/train.jsonl")
    page.click("tr:has-text('data/train.jsonl') >> text=preview")
    expect(page.locator("#preview")).to_contain_text("make soup 11")

    # A second version: the same folder with a changed README.
    (folder / "README.md").write_text("# Soup recipes, second edition\n")
    _upload(page, server, folder, "soup-set")
    page.goto(server.base + "/library/a/soup-set/")
    expect(page.locator("h1")).to_contain_text("version 2 of 2")

    # Restore the first: a new version 3 equal to version 1.
    page.goto(server.base + "/library/a/soup-set/?v=1")
    page.click("#restore-version")
    expect(page.locator("h1")).to_contain_text("version 3 of 3")
    expect(page.locator(".timeline")).to_contain_text("restored from version 1")
    expect(page.locator("svg.lineage")).to_contain_text("soup-set@1")

    # Download version 3 and check it is version 1's content.
    with page.expect_download() as info:
        page.click("#download-version")
    path = tmp_path / "v3.tar"
    info.value.save_as(path)
    with tarfile.open(path) as tar:
        readme = tar.extractfile("soup-set-v3/README.md").read().decode()
        blob = tar.extractfile("soup-set-v3/data/blob.bin").read()
    assert readme.startswith("# Soup recipes\n")
    assert blob == big
    context.close()
