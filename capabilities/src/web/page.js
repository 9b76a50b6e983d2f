// The web capability's helpers, run in the page with one argument:
// {op, ...}. Every answer is plain JSON. Nothing here reaches the network.
async (a) => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const clean = (s) => (s || "").replace(/[ \t\u00a0]+/g, " ").replace(/\n{3,}/g, "\n\n").trim();
  const abs = (href) => { try { return new URL(href, document.baseURI).href; } catch (e) { return href; } };

  // The page as markdown an LLM can read: headings, paragraphs, lists,
  // links, emphasis, code and tables; scripts, styles and hidden parts left out.
  const markdown = (root) => {
    const skip = new Set(["SCRIPT", "STYLE", "NOSCRIPT", "TEMPLATE", "SVG", "CANVAS", "IFRAME", "HEAD"]);
    const hidden = (el) => {
      if (el.hidden || el.getAttribute("aria-hidden") === "true") return true;
      const s = getComputedStyle(el);
      return s.display === "none" || s.visibility === "hidden";
    };
    const inline = (node) => {
      let out = "";
      for (const c of node.childNodes) {
        if (c.nodeType === 3) { out += c.textContent.replace(/\s+/g, " "); continue; }
        if (c.nodeType !== 1 || skip.has(c.tagName) || hidden(c)) continue;
        const t = inline(c);
        switch (c.tagName) {
          case "A": out += c.getAttribute("href") ? `[${t.trim()}](${abs(c.getAttribute("href"))})` : t; break;
          case "STRONG": case "B": out += t.trim() ? `**${t.trim()}**` : ""; break;
          case "EM": case "I": out += t.trim() ? `*${t.trim()}*` : ""; break;
          case "CODE": out += "`" + t + "`"; break;
          case "BR": out += "\n"; break;
          case "IMG": out += c.alt ? `![${c.alt}](${abs(c.getAttribute("src") || "")})` : ""; break;
          default: out += t;
        }
      }
      return out;
    };
    const table = (t) => {
      const rows = [...t.rows].map((r) => [...r.cells].map((c) => clean(inline(c)).replace(/\|/g, "\\|")));
      if (!rows.length) return "";
      const width = Math.max(...rows.map((r) => r.length));
      const line = (r) => "| " + [...r, ...Array(width - r.length).fill("")].join(" | ") + " |";
      return [line(rows[0]), "|" + " --- |".repeat(width), ...rows.slice(1).map(line)].join("\n");
    };
    const blocks = [];
    const walk = (node, depth) => {
      for (const c of node.children) {
        if (skip.has(c.tagName) || hidden(c)) continue;
        const tag = c.tagName;
        if (/^H[1-6]$/.test(tag)) blocks.push("#".repeat(+tag[1]) + " " + clean(inline(c)));
        else if (tag === "P" || tag === "BLOCKQUOTE" || tag === "FIGCAPTION") {
          const t = clean(inline(c));
          if (t) blocks.push(tag === "BLOCKQUOTE" ? "> " + t : t);
        } else if (tag === "PRE") blocks.push("```\n" + c.innerText.replace(/\n$/, "") + "\n```");
        else if (tag === "UL" || tag === "OL") {
          let i = 0;
          const items = [...c.children].filter((li) => li.tagName === "LI").map((li) => {
            i += 1;
            return "  ".repeat(depth) + (tag === "OL" ? `${i}. ` : "- ") + clean(inline(li));
          });
          if (items.length) blocks.push(items.join("\n"));
        } else if (tag === "TABLE") blocks.push(table(c));
        else if (tag === "HR") blocks.push("---");
        else if (c.children.length) {
          // A container: its own loose text, then its blocks.
          const own = [...c.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent).join(" ").trim();
          if (own) blocks.push(clean(inline(c)));
          else walk(c, depth);
        } else {
          // A leaf: rendered as itself (a lone link stays a link).
          const t = clean(inline({ childNodes: [c] }));
          if (t) blocks.push(t);
        }
      }
    };
    walk(root, 0);
    return blocks.filter((b) => b.trim()).join("\n\n");
  };

  const tableJson = (t) => {
    const rows = [...t.rows].map((r) => [...r.cells].map((c) => clean(c.innerText)));
    if (!rows.length) return { headers: [], rows: [] };
    const headed = t.tHead || [...t.rows[0].cells].every((c) => c.tagName === "TH");
    return headed ? { headers: rows[0], rows: rows.slice(1) } : { headers: [], rows };
  };

  const info = () => {
    const nav = performance.getEntriesByType("navigation")[0];
    return {
      url: location.href,
      title: document.title,
      status: nav && nav.responseStatus ? nav.responseStatus : null,
    };
  };

  switch (a.op) {
    case "info":
      return info();
    case "text":
      return { ...info(), text: a.markdown ? markdown(document.body || document.documentElement) : clean(document.body ? document.body.innerText : "") };
    case "wait_selector": {
      const until = Date.now() + a.timeout_ms;
      while (Date.now() < until) {
        if (document.querySelector(a.selector)) return true;
        await sleep(50);
      }
      return false;
    }
    case "idle": {
      // Network idle: no new resource for quiet_ms (or the cap).
      const until = Date.now() + a.timeout_ms;
      let seen = performance.getEntriesByType("resource").length, since = Date.now();
      while (Date.now() < until) {
        await sleep(50);
        const now = performance.getEntriesByType("resource").length;
        if (now !== seen) { seen = now; since = Date.now(); }
        else if (Date.now() - since >= a.quiet_ms && document.readyState === "complete") return true;
      }
      return false;
    }
    case "settle": {
      // The DOM settled: no mutation for quiet_ms (or the cap).
      return await new Promise((resolve) => {
        let timer;
        const done = (v) => { obs.disconnect(); clearTimeout(timer); clearTimeout(cap); resolve(v); };
        const obs = new MutationObserver(() => { clearTimeout(timer); timer = setTimeout(() => done(true), a.quiet_ms); });
        obs.observe(document, { subtree: true, childList: true, attributes: true, characterData: true });
        timer = setTimeout(() => done(true), a.quiet_ms);
        const cap = setTimeout(() => done(false), a.timeout_ms);
      });
    }
    case "extract": {
      if (!a.selector) {
        const root = document.body || document.documentElement;
        return a.as === "text" ? { text: clean(root.innerText) } : { markdown: markdown(root) };
      }
      let nodes;
      try { nodes = [...document.querySelectorAll(a.selector)]; }
      catch (e) { return { error: "invalid_selector", message: String(e.message || e) }; }
      const total = nodes.length;
      nodes = nodes.slice(0, a.limit);
      let items;
      if (a.attribute) items = nodes.map((n) => n.getAttribute(a.attribute));
      else if (a.as === "html") items = nodes.map((n) => n.outerHTML);
      else if (a.as === "markdown") items = nodes.map((n) => markdown(n));
      else if (a.as === "links") items = nodes.flatMap((n) => (n.tagName === "A" ? [n] : [...n.querySelectorAll("a[href]")]))
        .map((l) => ({ text: clean(l.innerText), href: abs(l.getAttribute("href") || "") }));
      else if (a.as === "table") items = nodes.flatMap((n) => (n.tagName === "TABLE" ? [n] : [...n.querySelectorAll("table")])).map(tableJson);
      else items = nodes.map((n) => clean(n.innerText !== undefined ? n.innerText : n.textContent));
      return { selector: a.selector, count: total, items };
    }
    case "scroll": {
      const el = document.scrollingElement || document.documentElement;
      if (a.selector) {
        const t = document.querySelector(a.selector);
        if (!t) return { error: "selector_not_found" };
        t.scrollIntoView({ block: "center" });
        await sleep(50);
        return { scroll_y: Math.round(window.scrollY), scroll_height: el.scrollHeight, rounds: 1, grew: false };
      }
      if (a.pixels !== undefined && a.pixels !== null) {
        window.scrollBy(0, a.pixels);
        await sleep(50);
        return { scroll_y: Math.round(window.scrollY), scroll_height: el.scrollHeight, rounds: 1, grew: false };
      }
      // To the bottom, again while the page grows (an infinite list), up to max_rounds.
      const first = el.scrollHeight;
      const deadline = Date.now() + a.timeout_ms;
      let rounds = 0;
      for (; rounds < a.max_rounds && Date.now() < deadline; rounds++) {
        const before = el.scrollHeight;
        window.scrollTo(0, before);
        const until = Date.now() + a.wait_ms;
        while (Date.now() < until && el.scrollHeight === before) await sleep(50);
        if (el.scrollHeight === before) { rounds += 1; break; }
      }
      window.scrollTo(0, el.scrollHeight);
      return { scroll_y: Math.round(window.scrollY), scroll_height: el.scrollHeight, rounds, grew: el.scrollHeight > first };
    }
    default:
      return { error: "unknown_op" };
  }
}
