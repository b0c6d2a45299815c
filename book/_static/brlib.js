// The book's small page fixes (book/conf.py loads this file).
document.addEventListener("DOMContentLoaded", () => {
  // A figure in a notebook's output opens at full size, in a new tab, when clicked.
  for (const image of document.querySelectorAll("div.cell_output img")) {
    if (image.closest("a")) continue;
    const link = document.createElement("a");
    link.href = image.src;
    link.target = "_blank";
    link.className = "figure-full-size";
    link.title = "Open the figure at full size";
    image.replaceWith(link);
    link.appendChild(image);
  }
  // Table cells that hold only numbers (an accuracy, "80.19 ± 0.63", an interval) do not wrap.
  const numeric = /^[\s\d.,:%±+\-−–×\[\]()]+$/;
  for (const cell of document.querySelectorAll("article td")) {
    if (numeric.test(cell.textContent)) cell.classList.add("number");
  }
});
