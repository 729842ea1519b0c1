"""The admin dashboard in a real browser: headless Debian Chromium driven by selenium against a live server. It
logs in, waits until every chart has drawn, presses Retrain on a version page and sees the queued run, and opens
a user's timeline. Screenshots go to $CI_ARTIFACTS_DIR/browser or var/test-artifacts/browser (git-ignored);
UPDATE_README_SCREENSHOT=1 also writes the dashboard's to docs/dashboard.png."""

import os
import shutil
from pathlib import Path

import pytest
from celery import current_app
from django.utils import timezone

from retraining.models import RunStatus, TrainingRun
from retraining.services.runs import TRAINING_QUEUE
from tests.retraining.dashboard_factories import dashboard_history

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

REPO = Path(__file__).resolve().parents[2]
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WIDTH = 1400
CHARTS = ("offline", "online", "drift", "experiment", "training", "triggers")
# A chart has drawn when Chart.js holds an instance for its canvas with at least one value, and the canvas has
# painted pixels (any alpha): the data reached the chart and the chart reached the screen.
CHART_DRAWN = """
const chart = Chart.getChart(arguments[0]);
if (!chart || !chart.data.datasets.some(d => d.data.some(v => v !== null))) return false;
const {width, height} = arguments[0];
const pixels = chart.ctx.getImageData(0, 0, width, height).data;
for (let i = 3; i < pixels.length; i += 4) if (pixels[i] !== 0) return true;
return false;
"""


def _browser_or_skip():
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        message = f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"in CI the browser test must run: {message}")
        pytest.skip(message)


@pytest.fixture
def browser():
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={WIDTH},1000",
        "--hide-scrollbars",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture
def artifacts() -> Path:
    folder = Path(os.environ.get("CI_ARTIFACTS_DIR") or REPO / "var" / "test-artifacts") / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def training_queue_purged():
    """Retrain publishes a real message on the training queue; no trainer runs here, so it is removed after."""
    yield
    with current_app.connection_for_write() as connection:
        connection.default_channel.queue_purge(TRAINING_QUEUE)


def wait_for(driver, condition, timeout: float = 20):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def screenshot(driver, path: Path) -> None:
    """The whole page at the window's width."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WIDTH, max(height + 120, 800))
    driver.save_screenshot(str(path))
    driver.set_window_size(WIDTH, 1000)


def log_in(driver, live_server, django_user_model) -> None:
    from selenium.webdriver.common.by import By

    django_user_model.objects.create_superuser("operator", "operator@example.com", "a-browser-password")
    driver.get(f"{live_server.url}/admin/login/")
    driver.find_element(By.NAME, "username").send_keys("operator")
    driver.find_element(By.NAME, "password").send_keys("a-browser-password")
    driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_for(driver, lambda d: d.find_elements(By.ID, "dashboard-link"))


def test_an_operator_reads_the_dashboard_retrains_and_follows_a_user(
    browser, artifacts, live_server, django_user_model, settings, tmp_path, training_queue_purged
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions

    settings.MODEL_STORE = tmp_path / "store"
    history = dashboard_history(tmp_path, now=timezone.now())
    log_in(browser, live_server, django_user_model)

    browser.find_element(By.CSS_SELECTOR, "#dashboard-link a").click()
    canvases = {name: browser.find_element(By.CSS_SELECTOR, f"#chart-{name} canvas") for name in CHARTS}
    for name, canvas in canvases.items():
        wait_for(browser, lambda d, canvas=canvas: d.execute_script(CHART_DRAWN, canvas))
        assert canvas.size["width"] > 300, f"the {name} chart is squeezed at {WIDTH} px"
    assert browser.find_element(By.ID, "nav-sidebar").is_displayed()  # readable with the admin navigation open
    assert "v1" in browser.find_element(By.ID, "dash-pointers").text
    health = {row.text.split()[0]: row.text for row in browser.find_elements(By.CSS_SELECTOR, "#dash-health tbody tr")}
    assert list(health) == ["web", "worker", "trainer", "beat"]
    assert "ago" in health["web"] and "ago" in health["trainer"] and "never" in health["beat"]
    screenshot(browser, artifacts / "dashboard.png")
    if os.environ.get("UPDATE_README_SCREENSHOT") == "1":
        shutil.copyfile(artifacts / "dashboard.png", REPO / "docs" / "dashboard.png")

    browser.get(f"{live_server.url}/admin/registry/modelversion/{history.v3.pk}/change/")
    browser.find_element(By.ID, "retrain-button").click()
    wait_for(browser, expected_conditions.alert_is_present()).accept()
    message = wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".messagelist .success"))[0].text
    run = TrainingRun.objects.get(requested_by="admin:operator")
    assert message == f"Training run {run.pk} queued." and run.status == RunStatus.QUEUED
    newest = browser.find_element(By.CSS_SELECTOR, "#result_list tbody tr").text
    assert newest.startswith(f"{run.pk} Manual Queued admin:operator")
    screenshot(browser, artifacts / "retrain-queued.png")

    browser.get(f"{live_server.url}/admin/dashboard/")
    browser.find_element(By.ID, "timeline-user").send_keys("user-1")
    browser.find_element(By.CSS_SELECTOR, "#dash-pointers input[type=submit]").click()
    summary = wait_for(browser, lambda d: d.find_elements(By.ID, "timeline-summary"))[0].text
    assert summary.startswith("3 lists served to user-1")
    rows = browser.find_elements(By.CSS_SELECTOR, "#timeline tbody tr")
    assert len(rows) == 3 and "challenger_start of v3 by gate" in rows[0].text
    screenshot(browser, artifacts / "timeline.png")
