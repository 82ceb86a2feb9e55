// Opens the gateway's page in headless Chromium, signs in with a development token,
// picks one symbol and waits until a live tick shows with its age. Prints one JSON line.
import { chromium } from "playwright-core";

const [url, token, symbol] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium",
                                        args: ["--no-sandbox"] });
try {
  const page = await browser.newPage();
  await page.goto(url);
  await page.fill("#token", token);
  await page.fill("#symbols", symbol);
  await page.click("#connect");
  await page.waitForFunction(() => document.querySelector("#status").textContent.startsWith("connected"));
  console.log(JSON.stringify({ state: "connected" }));
  const row = `tr[data-symbol="${symbol}"]`;
  await page.waitForSelector(`${row} td.price`, { timeout: 20000 });
  const first = Number(await page.textContent(`${row} td.price`));
  // Prices keep arriving: wait for a later one, proving the page is live, not a snapshot.
  await page.waitForFunction(([sel, p]) => Number(document.querySelector(sel).textContent) > p,
                             [`${row} td.price`, first], { timeout: 20000 });
  const price = Number(await page.textContent(`${row} td.price`));
  const age = await page.textContent(`${row} td.age`);
  console.log(JSON.stringify({ state: "done", first, price, age }));
} finally {
  await browser.close();
}
