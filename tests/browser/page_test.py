"""Drives `serve`'s web page in headless Chromium: uploads an image, waits for the answer,
takes a screenshot and checks that boxes were drawn (in the canvas and on the screen).

    page_test.py URL IMAGE SCREENSHOT.png

Run by tests/browser/run.sh, which installs Chromium and starts the server.
"""

import sys
import time

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

# The server's palette colour of class 0 (candletron's visualizer), also the page's.
BOX_RGB = (31, 119, 180)


def main(url, image, screenshot):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu",
                 "--disable-dev-shm-usage", "--window-size=1200,1000"):
        options.add_argument(flag)
    # The Debian driver: Selenium must not look for (download) one.
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: "POST /v1/detect" in d.find_element(By.ID, "model").text)
        start = time.time()
        driver.find_element(By.ID, "file").send_keys(image)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-state")
                   in ("done", "error"))
        status = driver.find_element(By.ID, "status").text
        state = driver.find_element(By.TAG_NAME, "body").get_attribute("data-state")
        print(f"page answered in {time.time() - start:.2f} s: {status}")
        if state != "done":
            raise SystemExit(f"the page shows an error: {status}")
        shown = int(status.split()[0])
        listed = len(driver.find_elements(By.CSS_SELECTOR, "#results li"))
        # Box-coloured pixels on the canvas against the same image drawn without boxes.
        counts = driver.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const canvas = document.getElementById('canvas');
            const count = (ctx, w, h) => {
              const d = ctx.getImageData(0, 0, w, h).data;
              let n = 0;
              for (let i = 0; i < d.length; i += 4)
                if (d[i] === 31 && d[i + 1] === 119 && d[i + 2] === 180) n++;
              return n;
            };
            const file = document.getElementById('file').files[0];
            createImageBitmap(file).then((bmp) => {
              const plain = document.createElement('canvas');
              plain.width = bmp.width; plain.height = bmp.height;
              const p = plain.getContext('2d');
              p.drawImage(bmp, 0, 0);
              done([count(canvas.getContext('2d'), canvas.width, canvas.height),
                    count(p, plain.width, plain.height), canvas.width, canvas.height]);
            });
        """)
        drawn, plain, width, height = counts
        driver.save_screenshot(screenshot)
    finally:
        driver.quit()
    colours = Image.open(screenshot).convert("RGB").getcolors(1 << 24)
    on_screen = next((n for n, c in colours if c == BOX_RGB), 0)
    print(f"{shown} detections shown, {listed} listed; canvas {width}x{height}: "
          f"{drawn} box-coloured pixels ({plain} without boxes); screenshot: {on_screen}")
    if shown < 1 or listed != shown:
        raise SystemExit("no detections shown")
    if drawn - plain < 100 or on_screen < 100:
        raise SystemExit("no boxes drawn")
    print(f"ok: screenshot in {screenshot}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
